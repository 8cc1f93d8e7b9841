"""Claude's questions and plans answered from Discord: a button per option, pinging the batch.

First the sink alone against the fake Discord (how a question looks within Discord's limits),
then `concordia run` end to end: the real `claude` CLI, pointed at the fake Anthropic API
(``TOOL_ASK <question>`` becomes an AskUserQuestion with the options SQLite and Postgres,
``TOOL_PLAN <step>`` an ExitPlanMode), asks the group, people answer with the buttons or
`/concordia answer`, and the API's next request shows what reached Claude.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import discord.http
import pytest

from adapters.discord import DiscordAdapter, DiscordSink
from bot.model import (
    Answerers,
    Author,
    CommandResult,
    QuestionAsked,
    QuestionClosed,
    QuestionKind,
    QuestionOption,
    Role,
)
from tests.e2e.drivers import discord_config, interaction_reply
from tests.e2e.harness import BotProcess
from tests.e2e.test_discord_approvals_e2e import (
    StandInParty,
    discord_author,
    endpoints_restored,
    serving,
    start_batch,
    start_with_members,
    thread_output,
)
from tests.e2e.test_discord_e2e import bot_messages
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.discord_api import ALICE_ID, BOB_ID, CHANNEL_ID, TOKEN, FakeDiscord
from tests.waits import until

MAX_CHARS = 2000
EPHEMERAL = 1 << 6
# Button styles as Discord numbers them.
PRIMARY, SUCCESS, DANGER = 1, 3, 4
NO_PINGS: dict[str, list[int]] = {"parse": []}
QUESTION_HEAD = re.compile(r"(?:❓ \*\*Question|📋 \*\*Plan) (\d+)\*\*")
NOT_AN_AUTHOR = (
    "only the authors of this batch, approvers and the host answer this question "
    "(questions.answerers)"
)
WAIT_S = 60.0
POST = "POST /channels/{channel_id}/messages"


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


# -- reading questions off the fake ---------------------------------------------------------------


def question_messages(fake: FakeDiscord, channel_id: int) -> list[dict[str, Any]]:
    """The bot's questions and plans to approve in a channel or thread, oldest first."""
    try:
        shown = bot_messages(fake, channel_id)
    except KeyError:
        return []  # the thread is not there yet
    return [m for m in shown if QUESTION_HEAD.match(m["content"])]


def buttons(message: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(label, style, custom_id) of every button on a message, row by row."""
    return [
        (b["label"], b["style"], b["custom_id"])
        for row in message["components"]
        for b in row["components"]
    ]


def question_id_of(message: dict[str, Any]) -> int:
    match = QUESTION_HEAD.match(message["content"])
    assert match, message["content"]
    return int(match.group(1))


def custom_id(question_id: int, option: int) -> str:
    return f"concordia:question:{question_id}:{option}"


async def await_question(fake: FakeDiscord, thread: int) -> dict[str, Any]:
    """The thread's first question, once it is posted."""
    await until(
        lambda: question_messages(fake, thread), fake.requests, within_s=WAIT_S, what="a question"
    )
    return question_messages(fake, thread)[0]


async def await_closed(fake: FakeDiscord, thread: int) -> dict[str, Any]:
    """The thread's one question, once its buttons are gone."""

    def closed() -> bool:
        shown = question_messages(fake, thread)
        return bool(shown) and shown[0]["components"] == []

    await until(closed, fake.requests, within_s=WAIT_S, what="the question closed")
    (message,) = question_messages(fake, thread)
    return message


async def await_output(fake: FakeDiscord, thread: int, text: str) -> None:
    """``text`` in the thread: Claude's reply after the answer, so its request was made."""
    await until(
        lambda: text in thread_output(fake, thread),
        fake.requests,
        within_s=WAIT_S,
        what=f"{text!r} shown in the thread",
    )


def assert_open(message: dict[str, Any], pinged: list[int]) -> None:
    """Under the limit, only ``pinged`` mentioned, each once, and only in the last line."""
    content = message["content"]
    assert len(content) <= MAX_CHARS
    assert re.findall(r"<@!?(\d+)>", content) == [str(u) for u in pinged], content
    assert re.findall(r"<@!?(\d+)>", content.rsplit("\n", 1)[-1]) == [str(u) for u in pinged]
    assert message["allowed_mentions_history"][0] == {"parse": [], "users": pinged}
    assert [int(u["id"]) for u in message["mentions"]] == pinged
    assert message["mention_everyone"] is False


def assert_closed(message: dict[str, Any], mark: str, outcome: str) -> None:
    """The question kept, its buttons gone, the outcome as its last line, pinging nobody."""
    content = message["content"]
    asked = message["content_history"][0].rsplit("\n", 1)[0]
    assert content == f"{asked}\n{mark} {outcome}", content
    assert message["components"] == []
    assert message["allowed_mentions_history"][-1] == NO_PINGS
    assert message["mentions"] == []


def tool_results(api: FakeAnthropic) -> list[dict[str, Any]]:
    """Every tool_result block the CLI sent the API, in order."""
    return [
        block
        for turn in api.turns
        for message in turn.body["messages"]
        if message["role"] == "user" and isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]


def result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, list):
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return str(content)


# -- the sink alone, against the fake Discord ------------------------------------------------------


def asked(options: int, *, label: str, mention: tuple[Author, ...]) -> QuestionAsked:
    return QuestionAsked(
        question_id=4,
        batch_id=1,
        kind=QuestionKind.CHOICE,
        header="Pick",
        text="Which one? @everyone should not be pinged",
        options=tuple(
            QuestionOption(f"{label} {n}", "a description " * 12) for n in range(1, options + 1)
        ),
        multi_select=False,
        answerers=Answerers.AUTHORS,
        mention=mention,
        timeout_s=60.0,
    )


@pytest.mark.timeout(30)
async def test_many_long_options_fit_discords_limits_and_closing_takes_the_buttons(
    fake_discord: FakeDiscord,
) -> None:
    alice = Author("discord", str(ALICE_ID), "Alice")
    carol = Author("websocket", "carol", "carol")
    question = asked(30, label="x" * 120, mention=(alice, carol, alice))
    client = discord.Client(intents=discord.Intents.none())
    with endpoints_restored():
        discord.http.Route.BASE = fake_discord.api_base
        async with client:
            await client.login(TOKEN)
            sink = DiscordSink(client, 0.05, str)
            ref = await sink.post_question(str(CHANNEL_ID), question)
            closed = QuestionClosed(4, 1, True, "Alice answered: " + "y" * 3000)
            await sink.close_question(ref, question, closed)

    (message,) = question_messages(fake_discord, CHANNEL_ID)
    opened = message["content_history"][0]
    assert len(opened) <= MAX_CHARS
    assert opened.startswith("❓ **Question 4** (Pick): Which one? @\u200beveryone")
    assert "\n1. " + "x" * 120 + " 1: a description" in opened
    assert "… and " in opened, "the options that do not fit are counted"
    assert "<@" + str(ALICE_ID) + ">" in opened.rsplit("\n", 1)[-1]
    assert "`/concordia answer 4 <number or your own words>`" in opened
    assert message["allowed_mentions_history"][0] == {"parse": [], "users": [ALICE_ID]}
    # Posted: 25 buttons (Discord's most), 5 rows of 5, labels cut to 80 characters.
    assert message["components"] == []
    posted = next(c for c in fake_discord.calls if c.route == POST and c.json.get("components"))
    rows = posted.json["components"]
    assert [len(row["components"]) for row in rows] == [5, 5, 5, 5, 5]
    shown = [b for row in rows for b in row["components"]]
    assert [b["custom_id"] for b in shown] == [custom_id(4, n) for n in range(1, 26)]
    assert all(len(b["label"]) == 80 and b["label"].endswith("…") for b in shown)
    assert {b["style"] for b in shown} == {PRIMARY}
    # Closed: the same question, the outcome cut to one short line.
    content = message["content"]
    assert len(content) <= MAX_CHARS
    assert content.rsplit("\n", 1)[0] == opened.rsplit("\n", 1)[0]
    assert content.rsplit("\n", 1)[1].startswith("✅ Alice answered: yyy")
    assert message["allowed_mentions_history"][-1] == NO_PINGS


@pytest.mark.timeout(30)
async def test_a_plan_shows_approve_and_reject_and_how_to_reject_with_feedback(
    fake_discord: FakeDiscord,
) -> None:
    plan = QuestionAsked(
        question_id=9,
        batch_id=2,
        kind=QuestionKind.PLAN,
        header="Plan",
        text="Claude's plan is above.",
        options=(QuestionOption("Approve", "go"), QuestionOption("Reject", "plan again")),
        multi_select=False,
        answerers=Answerers.APPROVERS,
        mention=(Author("discord", str(BOB_ID), "Bob"),),
        timeout_s=60.0,
    )
    client = discord.Client(intents=discord.Intents.none())
    with endpoints_restored():
        discord.http.Route.BASE = fake_discord.api_base
        async with client:
            await client.login(TOKEN)
            await DiscordSink(client, 0.05, str).post_question(str(CHANNEL_ID), plan)

    (message,) = question_messages(fake_discord, CHANNEL_ID)
    assert buttons(message) == [
        ("Approve", SUCCESS, custom_id(9, 1)),
        ("Reject", DANGER, custom_id(9, 2)),
    ]
    assert message["content"].startswith("📋 **Plan 9**: Claude's plan is above.")
    assert "`/concordia answer 9 <your feedback>`" in message["content"]
    assert_open(message, pinged=[BOB_ID])


@dataclass(eq=False)
class AnsweringParty(StandInParty):
    """The stand-in Party seam, also recording each answer to a question."""

    answers: asyncio.Queue[tuple[int, Author, str]] = field(default_factory=asyncio.Queue)

    async def answer(self, question_id: int, author: Author, text: str) -> CommandResult:
        self.answers.put_nowait((question_id, author, text))
        return CommandResult("answer", True, f"question {question_id}: {author.name} chose {text}")


@pytest.fixture
def quick_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """discord.py waits this long for more GUILD_CREATEs; the fake sends its one at once."""
    monkeypatch.setattr(DiscordAdapter, "guild_ready_timeout_s", 0.05)


@pytest.mark.timeout(45)
@pytest.mark.usefixtures("quick_ready")
async def test_question_buttons_posted_before_a_restart_still_answer(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    alice = discord_author(ALICE_ID, "Alice")
    before = AnsweringParty({ALICE_ID: Role.PROMPTER})
    async with serving(fake_discord, before, tmp_path):
        thread = await start_batch(fake_discord, before, alice)
        before.publish(asked(3, label="option", mention=(alice,)))
        question = await await_question(fake_discord, thread)
        strangers = await fake_discord.click_button(BOB_ID, int(question["id"]), custom_id(4, 1))
        hint = await interaction_reply(fake_discord, strangers)

    after = AnsweringParty({BOB_ID: Role.HOST})
    async with serving(fake_discord, after, tmp_path):
        click = await fake_discord.click_button(BOB_ID, int(question["id"]), custom_id(4, 2))
        answered = await asyncio.wait_for(after.answers.get(), WAIT_S)
        reply = await interaction_reply(fake_discord, click)

    assert hint["flags"] & EPHEMERAL
    assert "/concordia join" in hint["content"], "a stranger is told how to join"
    assert before.answers.empty()
    assert answered == (4, discord_author(BOB_ID, "Bob"), "2"), "the option's number"
    assert reply["flags"] & EPHEMERAL
    assert reply["content"] == "question 4: Bob chose 2"
    callback = next(c for c in fake_discord.calls if click["token"] in c.path)
    assert callback.json["type"] == 5, "deferred at once: Discord wants an answer within 3 s"


# -- `concordia run` end to end ------------------------------------------------------------------


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_a_question_answered_with_a_button_reaches_claude(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    config = discord_config(tmp_path, fake_api, fake_discord)
    async with BotProcess(config, tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}) as bot:
        await start_with_members(bot, fake_discord, prompter=ALICE_ID, approver=None)
        mention = await fake_discord.send_message(ALICE_ID, "TOOL_ASK Which database?")
        thread = int(mention["id"])

        question = await await_question(fake_discord, thread)
        question_id = question_id_of(question)
        click = await fake_discord.click_button(
            ALICE_ID, int(question["id"]), custom_id(question_id, 1)
        )
        reply = await interaction_reply(fake_discord, click)
        closed = await await_closed(fake_discord, thread)
        await await_output(fake_discord, thread, "TOOL RESULT")

    content = question["content"]
    assert content.startswith(f"❓ **Question {question_id}** (Choice): Which database?\n")
    assert "\n1. SQLite: one file, no server\n2. Postgres: a server\n" in content
    assert buttons(question) == [
        ("SQLite", PRIMARY, custom_id(question_id, 1)),
        ("Postgres", PRIMARY, custom_id(question_id, 2)),
    ]
    assert_open(question, pinged=[ALICE_ID])
    assert reply["flags"] & EPHEMERAL
    assert reply["content"] == f"question {question_id}: Alice answered: SQLite"
    assert_closed(closed, "✅", "Alice answered: SQLite")
    (answer,) = tool_results(fake_api)
    assert '"Which database?"="SQLite"' in result_text(answer)
    assert not answer.get("is_error")


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_a_prompter_outside_the_batch_is_refused_and_the_question_stays_open(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    config = discord_config(tmp_path, fake_api, fake_discord)
    async with BotProcess(config, tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}) as bot:
        await start_with_members(bot, fake_discord, prompter=ALICE_ID, approver=None)
        await start_with_members(bot, fake_discord, prompter=BOB_ID, approver=None)
        mention = await fake_discord.send_message(ALICE_ID, "TOOL_ASK Which database?")
        thread = int(mention["id"])
        question = await await_question(fake_discord, thread)
        question_id = question_id_of(question)

        bobs = await fake_discord.click_button(
            BOB_ID, int(question["id"]), custom_id(question_id, 1)
        )
        refused = await interaction_reply(fake_discord, bobs)
        (unchanged,) = question_messages(fake_discord, thread)
        # Had Bob's click counted, the question would be closed and Alice's refused.
        alices = await fake_discord.click_button(
            ALICE_ID, int(question["id"]), custom_id(question_id, 2)
        )
        taken = await interaction_reply(fake_discord, alices)
        closed = await await_closed(fake_discord, thread)
        await await_output(fake_discord, thread, "TOOL RESULT")

    assert refused["flags"] & EPHEMERAL
    assert refused["content"] == NOT_AN_AUTHOR
    assert unchanged["content_history"] == question["content_history"]
    assert len(buttons(unchanged)) == 2, "the question stays open"
    assert taken["content"] == f"question {question_id}: Alice answered: Postgres"
    assert_closed(closed, "✅", "Alice answered: Postgres")
    (answer,) = tool_results(fake_api)
    assert '"Which database?"="Postgres"' in result_text(answer)


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_a_plan_approved_with_its_button_lets_claude_proceed(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    config = discord_config(tmp_path, fake_api, fake_discord)
    async with BotProcess(config, tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}) as bot:
        await start_with_members(bot, fake_discord, prompter=ALICE_ID, approver=BOB_ID)
        mention = await fake_discord.send_message(ALICE_ID, "/plan TOOL_PLAN add a users table")
        thread = int(mention["id"])
        plan = await await_question(fake_discord, thread)
        plan_id = question_id_of(plan)
        shown_before = thread_output(fake_discord, thread)

        alices = await fake_discord.click_button(ALICE_ID, int(plan["id"]), custom_id(plan_id, 1))
        refused = await interaction_reply(fake_discord, alices)
        bobs = await fake_discord.click_button(BOB_ID, int(plan["id"]), custom_id(plan_id, 1))
        approved = await interaction_reply(fake_discord, bobs)
        closed = await await_closed(fake_discord, thread)
        await await_output(fake_discord, thread, "TOOL RESULT")

    assert "1. add a users table\n2. Run the tests" in shown_before.split("📋")[0], (
        "the plan itself is posted above its buttons"
    )
    assert buttons(plan) == [
        ("Approve", SUCCESS, custom_id(plan_id, 1)),
        ("Reject", DANGER, custom_id(plan_id, 2)),
    ]
    assert f"`/concordia answer {plan_id} <your feedback>`" in plan["content"]
    assert_open(plan, pinged=[ALICE_ID])
    assert refused["flags"] & EPHEMERAL
    assert "only approvers and the host" in refused["content"], refused["content"]
    assert approved["flags"] & EPHEMERAL
    assert "plan approved by Bob" in approved["content"]
    assert_closed(closed, "✅", "plan approved by Bob")
    (answer,) = tool_results(fake_api)
    assert "User has approved exiting plan mode" in result_text(answer)
    assert not answer.get("is_error")


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_a_plan_rejected_with_feedback_by_the_slash_command_tells_claude_why(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    config = discord_config(tmp_path, fake_api, fake_discord)
    async with BotProcess(config, tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}) as bot:
        await start_with_members(bot, fake_discord, prompter=ALICE_ID, approver=BOB_ID)
        mention = await fake_discord.send_message(ALICE_ID, "/plan TOOL_PLAN add a users table")
        thread = int(mention["id"])
        plan = await await_question(fake_discord, thread)
        plan_id = question_id_of(plan)

        slash = await fake_discord.send_interaction(
            BOB_ID,
            "concordia",
            "answer",
            {"question_id": plan_id, "answer": "keep the old schema"},
            channel_id=thread,
        )
        rejected = await interaction_reply(fake_discord, slash)
        closed = await await_closed(fake_discord, thread)
        await await_output(fake_discord, thread, "TOOL ERROR")

    assert rejected["flags"] & EPHEMERAL
    assert "plan rejected by Bob: keep the old schema" in rejected["content"]
    assert_closed(closed, "✅", "plan rejected by Bob: keep the old schema")
    (answer,) = tool_results(fake_api)
    assert answer.get("is_error") is True
    assert "keep the old schema" in result_text(answer)
