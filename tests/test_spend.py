"""What turns cost and who spent it: the split, the periods, the store, `cost` and `status`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from bot.model import Batch, MergeGroup, SourcePrompt
from bot.spend import period_starts, split_cost
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
