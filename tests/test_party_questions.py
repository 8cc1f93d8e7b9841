"""Claude's questions and plans, answered by the group (issue #15), and images in prompts.

The flow (who may answer, first answer wins, timeouts, reminders, cancel) runs on the
`FakeAgent`, whose ``TOOL_ASK``/``TOOL_PLAN`` ask like the CLI does. The tests marked
`claude` drive the real CLI against `FakeAnthropic` and assert on what reached the model:
the answers in the shape the CLI gives them, a plan's approval or its feedback, an image as
an image block.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.model import (
    Accepted,
    Answerers,
    Image,
    Notice,
    OutputText,
    Prompt,
    QuestionAsked,
    QuestionClosed,
    QuestionKind,
    QuestionOutcome,
    Rejected,
    Role,
    TurnStatus,
)
from tests.conftest import make_settings
from tests.fakes.agent import FakeAgent
from tests.fakes.anthropic_api import FakeAnthropic
from tests.payloads.images import PNG_1PX, PNG_1PX_B64
from tests.rigs import Rig, open_rig

pytestmark = [pytest.mark.timeout(90)]


@contextlib.asynccontextmanager
async def question_rig(
    tmp_path: Path, api: FakeAnthropic | None = None, **sections: dict[str, Any]
) -> AsyncIterator[Rig]:
    """alice and bob (prompters), ann (approver) and the host joined."""
    async with open_rig(make_settings(tmp_path, api, **sections), api) as rig:
        for name in ("alice", "bob"):
            assert await rig.chat.join(name, rig.invites.prompter)
        assert await rig.chat.join("host", rig.invites.host)
        assert await rig.chat.join("ann", await rig.book.mint_extra(Role.APPROVER))
        yield rig


async def _asked(rig: Rig, after: int = 0) -> QuestionAsked:
    event = await rig.events.until(lambda e: isinstance(e, QuestionAsked), after)
    assert isinstance(event, QuestionAsked)
    return event


async def _closed(rig: Rig) -> QuestionClosed:
    event = await rig.events.until(lambda e: isinstance(e, QuestionClosed))
    assert isinstance(event, QuestionClosed)
    return event


def _api_text(api: FakeAnthropic) -> str:
    """Everything the model was sent, as one string (tool results included)."""
    return "\n".join(json.dumps(turn.body) for turn in api.turns)


@pytest.mark.claude
async def test_a_question_is_answered_by_an_author_and_claude_gets_the_answer(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with question_rig(tmp_path, fake_api) as rig:
        await rig.chat.push_prompt("alice", "TOOL_ASK Which database?")
        asked = await _asked(rig)
        assert asked.kind is QuestionKind.CHOICE
        assert asked.text == "Which database?"
        assert [o.label for o in asked.options] == ["SQLite", "Postgres"]
        assert asked.answerers is Answerers.AUTHORS
        assert [a.name for a in asked.mention] == ["alice"]
        assert rig.party.waiting_questions() == [asked]

        refused = await rig.chat.command("bob", "answer", f"{asked.question_id} 2")
        assert not refused.ok
        assert "only the authors of this batch" in refused.text
        answered = await rig.chat.command("alice", "answer", f"{asked.question_id} 1")
        assert answered.ok, answered.text
        late = await rig.chat.command("ann", "answer", f"{asked.question_id} Postgres")
        assert not late.ok
        assert "not waiting" in late.text

        done = await rig.events.done()
        assert done.status is TurnStatus.SUCCESS
        closed = await _closed(rig)
        assert closed.answered
        assert closed.text == "alice answered: SQLite"
        assert '\\"Which database?\\"=\\"SQLite\\"' in _api_text(fake_api)
        assert await rig.store.question_outcome(asked.question_id) == (
            QuestionOutcome.ANSWERED,
            "SQLite",
        )


async def test_an_answer_in_own_words_is_passed_on_as_given(tmp_path: Path) -> None:
    async with question_rig(tmp_path, questions={"answerers": "members"}) as rig:
        await rig.chat.push_prompt("alice", "TOOL_ASK Which database?")
        asked = await _asked(rig)
        answered = await rig.party.answer(asked.question_id, rig.chat.author("bob"), "MySQL 8")
        assert answered.ok, answered.text
        await rig.events.done()
        agent = rig.api
        assert isinstance(agent, FakeAgent)
        output = "".join(e.text for e in rig.events.seen if isinstance(e, OutputText))
        assert 'TOOL RESULT: {"Which database?": "MySQL 8"}' in output


async def test_nobody_answering_tells_claude_after_the_timeout_with_reminders(
    tmp_path: Path,
) -> None:
    async with question_rig(tmp_path, questions={"timeout_s": 0.6, "remind_every_s": 0.2}) as rig:
        await rig.chat.push_prompt("alice", "TOOL_ASK Which database?")
        asked = await _asked(rig)
        closed = await _closed(rig)
        assert not closed.answered
        assert closed.text == "nobody answered within 0.6 s"
        await rig.events.done()
        reminders = [
            e for e in rig.events.seen if isinstance(e, Notice) and "still waiting" in e.message
        ]
        assert reminders, "a waiting question is brought up again"
        assert str(asked.question_id) in reminders[0].message
        output = "".join(e.text for e in rig.events.seen if isinstance(e, OutputText))
        assert "TOOL ERROR: Nobody in the team answered within 0.6 s" in output
        outcome, _ = await rig.store.question_outcome(asked.question_id)
        assert outcome is QuestionOutcome.TIMED_OUT


async def test_cancel_while_a_question_waits_ends_the_turn(tmp_path: Path) -> None:
    async with question_rig(tmp_path) as rig:
        await rig.chat.push_prompt("alice", "TOOL_ASK Which database?")
        asked = await _asked(rig)
        cancelled = await rig.chat.command("alice", "cancel")
        assert cancelled.ok, cancelled.text
        closed = await _closed(rig)
        assert closed.text == "the turn was cancelled"
        done = await rig.events.done()
        assert done.status is TurnStatus.INTERRUPTED
        outcome, _ = await rig.store.question_outcome(asked.question_id)
        assert outcome is QuestionOutcome.CANCELLED


async def test_a_question_open_when_the_bot_stops_is_abandoned_and_asked_again(
    tmp_path: Path,
) -> None:
    """The bot stops (gracefully) mid-question: the question closes as abandoned, saying why;
    the batch, run again after the restart, asks anew; answered once, it ends once. (A bot
    killed outright: tests/e2e/test_scenarios.py.)"""
    async with question_rig(tmp_path) as rig:
        await rig.chat.push_prompt("alice", "TOOL_ASK Which database?")
        first = await _asked(rig)
    closed = [e for e in rig.events.seen if isinstance(e, QuestionClosed)]
    assert [(c.question_id, c.text) for c in closed] == [
        (first.question_id, "Concordia is restarting: Claude will ask again")
    ]
    settings = make_settings(tmp_path, None)
    async with open_rig(settings) as again:
        second = await _asked(again)
        assert second.question_id != first.question_id
        answered = await again.party.answer(second.question_id, again.chat.author("alice"), "2")
        assert answered.ok, answered.text
        done = await again.events.done()
        assert done.status is TurnStatus.SUCCESS
        assert [e for e in again.events.seen if isinstance(e, QuestionAsked)] == [second]
        outcome, _ = await again.store.question_outcome(first.question_id)
        assert outcome is QuestionOutcome.ABANDONED
        agent = again.api
        assert isinstance(agent, FakeAgent)
        assert len(agent.turns) == 1


@pytest.mark.claude
async def test_a_plan_prompt_plans_first_and_an_approver_approves_it(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with question_rig(tmp_path, fake_api) as rig:
        await rig.chat.push_prompt("alice", "/plan TOOL_PLAN add a users table")
        asked = await _asked(rig)
        assert asked.kind is QuestionKind.PLAN
        assert asked.answerers is Answerers.APPROVERS
        output = "".join(e.text for e in rig.events.seen if isinstance(e, OutputText))
        assert "# Plan\n\n1. add a users table" in output, "the plan is posted as Markdown"
        refused = await rig.chat.command("alice", "answer", f"{asked.question_id} 1")
        assert not refused.ok
        assert "only approvers and the host answer Claude's plans" in refused.text
        approved = await rig.chat.command("ann", "answer", f"{asked.question_id} Approve")
        assert approved.ok, approved.text
        assert (await rig.events.done()).status is TurnStatus.SUCCESS
        assert (await _closed(rig)).text == "plan approved by ann"
        assert "User has approved exiting plan mode" in _api_text(fake_api)
        assert "/plan" not in fake_api.turns[0].user_text


@pytest.mark.claude
async def test_a_rejected_plan_gives_claude_the_feedback(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with question_rig(tmp_path, fake_api, claude={"permission_mode": "plan"}) as rig:
        await rig.chat.push_prompt("alice", "TOOL_PLAN add a users table")
        asked = await _asked(rig)
        assert asked.kind is QuestionKind.PLAN
        rejected = await rig.chat.command(
            "host", "answer", f"{asked.question_id} keep the users in Postgres instead"
        )
        assert rejected.ok, rejected.text
        assert (await rig.events.done()).status is TurnStatus.SUCCESS
        closed = await _closed(rig)
        assert closed.text == "plan rejected by host: keep the users in Postgres instead"
        assert "host rejected the plan: keep the users in Postgres instead" in _api_text(fake_api)


@pytest.mark.claude
async def test_an_image_reaches_the_model_as_an_image_block(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with question_rig(tmp_path, fake_api) as rig:
        image = Image("dot.png", "image/png", PNG_1PX)
        prompt = Prompt("m1", rig.chat.author("alice"), "what is in this picture?", "t1", (image,))
        assert isinstance(await rig.party.submit(prompt), Accepted)
        assert (await rig.events.done()).status is TurnStatus.SUCCESS
        (turn,) = fake_api.turns
        blocks = [b for m in turn.body["messages"] for b in m["content"] if isinstance(b, dict)]
        images = [b for b in blocks if b.get("type") == "image"]
        assert [i["source"] for i in images] == [
            {"type": "base64", "media_type": "image/png", "data": PNG_1PX_B64}
        ]
        texts = " ".join(b.get("text", "") for b in blocks)
        assert "1. dot.png from alice" in texts, "each image is attributed to its author"


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (Image("evil.png", "image/png", b"#!/bin/sh\nrm -rf /\n"), "not an image Claude reads"),
        (Image("big.png", "image/png", PNG_1PX + b"\0" * 5000), "party.max_image_bytes"),
    ],
)
async def test_the_party_refuses_an_image_that_lies_or_is_too_large(
    tmp_path: Path, image: Image, reason: str
) -> None:
    async with question_rig(tmp_path, party={"max_image_bytes": 4096}) as rig:
        prompt = Prompt("m1", rig.chat.author("alice"), "look", "t1", (image,))
        refused = await rig.party.submit(prompt)
        assert isinstance(refused, Rejected)
        assert reason in refused.reason
