"""What turns cost and who spent it: the split, the periods, the store, `cost` and `status`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bot.agent import Usage
from bot.config import BudgetSettings
from bot.model import (
    Accepted,
    Author,
    Batch,
    MergeGroup,
    Notice,
    Prompt,
    Rejected,
    RejectKind,
    SourcePrompt,
)
from bot.spend import SpendBook, period_starts, split_cost
from bot.store import Store
from tests.conftest import make_settings
from tests.fakes.anthropic_api import FakeAnthropic
from tests.rigs import Rig, open_rig

pytestmark = [pytest.mark.timeout(60)]


def _source(prompt_id: int, author: str) -> SourcePrompt:
    return SourcePrompt(prompt_id, author, f"ask {prompt_id}", platform="ws", user_id=author)


def _batch(*sources: SourcePrompt, groups: tuple[MergeGroup, ...] = ()) -> Batch:
    return Batch(1, "merged", sources, groups)


def _shares(batch: Batch, cost: float) -> dict[str, float]:
    return {s.name: round(s.cost_usd, 9) for s in split_cost(batch, cost)}


def test_a_lone_prompt_costs_its_author_the_whole_turn() -> None:
    assert _shares(_batch(_source(1, "ann")), 0.30) == {"ann": 0.30}


def test_each_part_costs_the_same_and_its_authors_share_it_equally() -> None:
    batch = _batch(
        _source(1, "ann"),
        _source(2, "ben"),
        _source(3, "cid"),
        _source(4, "dee"),  # a "+1": in no group
        groups=(
            MergeGroup((1, 2), ("ann", "ben"), "rename the module"),
            MergeGroup((3,), ("cid",), "then run the tests"),
        ),
    )
    shares = _shares(batch, 0.40)
    assert shares == {"ann": 0.10, "ben": 0.10, "cid": 0.20}
    assert sum(shares.values()) == pytest.approx(0.40)


def test_an_author_in_two_parts_pays_for_both() -> None:
    batch = _batch(
        _source(1, "ann"),
        _source(2, "ann"),
        _source(3, "ben"),
        groups=(MergeGroup((1,), ("ann",), "a"), MergeGroup((2, 3), ("ann", "ben"), "b")),
    )
    assert _shares(batch, 1.0) == {"ann": 0.75, "ben": 0.25}


def test_nothing_is_charged_for_a_free_turn() -> None:
    assert split_cost(_batch(_source(1, "ann")), 0.0) == []


def test_periods_follow_the_local_calendar() -> None:
    starts = period_starts(datetime(2026, 12, 3, 15, 30).astimezone())  # a Thursday
    assert starts["today"].date().isoformat() == "2026-12-03"
    assert starts["this week"].date().isoformat() == "2026-11-30"  # Monday
    assert starts["this month"].date().isoformat() == "2026-12-01"
    assert {s.hour for s in starts.values()} == {0}


@contextlib.asynccontextmanager
async def _party(tmp_path: Path, api: FakeAnthropic | None = None) -> AsyncIterator[Rig]:
    settings = make_settings(tmp_path, api, party={"collect_window_s": 5.0, "quiet_gap_s": 0.5})
    async with open_rig(settings, api) as rig:
        for name in ("alice", "bob"):
            assert await rig.chat.join(name, rig.invites.prompter)
        assert await rig.chat.join("host", rig.invites.host)
        yield rig


async def test_a_merged_batch_is_charged_to_its_authors_and_shown_by_cost(tmp_path: Path) -> None:
    async with _party(tmp_path) as rig:
        await rig.chat.push_prompt("alice", "fix the parser", thread="t1")
        await rig.chat.push_prompt("bob", "add a parser test", thread="t2")
        await rig.events.done()
        assert len(rig.api.turns) == 1  # one merged batch
        turn_cost = await rig.store.party_spend_since("default", datetime(2000, 1, 1).astimezone())
        assert turn_cost > 0
        members = await rig.store.spend_since("default", datetime(2000, 1, 1).astimezone())
        assert {m.name for m in members} == {"alice", "bob"}
        assert sum(m.cost_usd for m in members) == pytest.approx(turn_cost)

        mine = await rig.chat.command("alice", "cost")
        assert mine.ok
        assert mine.text.startswith("your spend: today $")
        assert "party" not in mine.text  # only the host sees everyone's
        everyone = await rig.chat.command("host", "cost")
        assert f"party default: today ${turn_cost:.2f}" in everyone.text
        assert "alice $" in everyone.text
        assert "bob $" in everyone.text
        assert f"spent today: ${turn_cost:.2f}" in (await rig.chat.command("bob", "status")).text


@pytest.mark.claude
async def test_the_real_clis_running_total_becomes_each_turns_own_cost(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    """`total_cost_usd` grows turn by turn in one CLI process: two like turns cost alike."""
    async with _party(tmp_path, fake_api) as rig:
        await rig.chat.push_prompt("alice", "first question", thread="t1")
        await rig.events.done()
        await rig.chat.push_prompt("alice", "second question", thread="t2")
        await rig.events.done(after=len(rig.events.seen))
        since = datetime(2000, 1, 1).astimezone()
        async with rig.store.db.execute("SELECT cost_usd FROM turn_costs ORDER BY id") as cur:
            first, second = [row[0] for row in await cur.fetchall()]
        assert first > 0
        assert second == pytest.approx(first, rel=0.2)  # not first + second
        [alice] = await rig.store.spend_since("default", since)
        assert alice.cost_usd == pytest.approx(first + second)


@contextlib.asynccontextmanager
async def _budgeted(tmp_path: Path, **budget: float) -> AsyncIterator[Rig]:
    settings = make_settings(tmp_path, None, budget=budget)
    async with open_rig(settings) as rig:
        for name in ("alice", "bob"):
            assert await rig.chat.join(name, rig.invites.prompter)
        assert await rig.chat.join("host", rig.invites.host)
        yield rig


async def test_a_member_over_budget_is_refused_with_when_it_resets(tmp_path: Path) -> None:
    async with _budgeted(tmp_path, member_daily_usd=0.001) as rig:
        assert isinstance(await rig.chat.push_prompt("alice", "fix the parser"), Accepted)
        await rig.events.done()
        refused = await rig.chat.push_prompt("alice", "and the lexer")
        assert isinstance(refused, Rejected)
        assert refused.kind is RejectKind.OVER_BUDGET
        assert "of your $0.00 daily budget" in refused.reason
        assert "resets at midnight, in " in refused.reason
        assert isinstance(await rig.chat.push_prompt("bob", "and the lexer"), Accepted)


async def test_a_party_over_budget_holds_its_queue_until_the_host_lifts_it(
    tmp_path: Path,
) -> None:
    async with _budgeted(tmp_path, party_daily_usd=0.001) as rig:
        await rig.chat.push_prompt("alice", "fix the parser")
        await rig.events.done()
        mark = len(rig.events.seen)
        assert isinstance(await rig.chat.push_prompt("bob", "and the lexer"), Accepted)
        held = await rig.events.until(lambda e: isinstance(e, Notice), mark)
        assert isinstance(held, Notice)
        assert "daily budget (budget.party_daily_usd): prompts are kept" in held.message
        assert len(rig.api.turns) == 1  # held: the second prompt waits
        assert "party: $" in (await rig.chat.command("bob", "budget")).text
        assert not (await rig.chat.command("bob", "budget", "lift")).ok
        lifted = await rig.chat.command("host", "budget", "lift")
        assert lifted.ok
        await rig.events.done(after=mark)
        assert [t.user_text for t in rig.api.turns][-1] == "and the lexer"
        assert "(lifted for today)" in (await rig.chat.command("host", "budget")).text


async def test_a_held_party_resumes_by_itself_at_midnight(tmp_path: Path) -> None:
    """The clock is the book's own: just before midnight, then just after."""
    store_path = tmp_path / "state" / "concordia.db"
    async with Store(store_path) as store:
        await store.ensure_party("p")
        await store.add_prompt("p", Prompt("s1", Author("ws", "ann", "ann"), "x"), "x")
        batch = await store.create_batch("p", "x", (), await store.pending_prompts("p"))
        await store.record_cost("p", batch, Usage(1, 1, 5.0), [])
        today = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
        times = [today + timedelta(hours=23, minutes=59, seconds=59, milliseconds=900)]
        book = SpendBook(store, "p", BudgetSettings(party_daily_usd=1.0), clock=lambda: times[-1])
        said: list[str] = []
        held = asyncio.Event()

        def say(why: str) -> None:
            said.append(why)
            held.set()

        holding = asyncio.create_task(book.hold_while_over(say))
        async with asyncio.timeout(5):
            await held.wait()
        assert not holding.done()
        times.append(today + timedelta(days=1, seconds=1))  # what the clock says after the wait
        async with asyncio.timeout(5):
            await holding  # the 0.1 s to midnight ran out and the new day is under budget
        assert len(said) == 1
        assert "$5.00 of its $1.00 daily budget" in said[0]
