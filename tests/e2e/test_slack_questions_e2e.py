"""Claude's questions and plans answered from Slack (#15): the question as Block Kit with a
button per option, clicks over Socket Mode, who answered in place of the buttons.

The first tests drive the sink alone (the real slack-sdk against the fake Slack); the others
are end to end: `concordia run` with the real `claude` CLI, whose AskUserQuestion and
ExitPlanMode calls come from the fake Anthropic API (``TOOL_ASK``, ``TOOL_PLAN``), which
echoes the tool result it got back, so what reached Claude is in its request bodies.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import SlackSink
from bot.model import (
    Answerers,
    Author,
    QuestionAsked,
    QuestionClosed,
    QuestionKind,
    QuestionOption,
)
from bot.ports import QuestionSink
from tests.e2e.harness import BotProcess
from tests.e2e.test_slack_e2e import join, start_bot
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.slack_api import (
    ACK_DEADLINE_S,
    ALICE_ID,
    BOB_ID,
    BOT_TOKEN,
    BOT_USER_ID,
    CHANNEL_ID,
    RESPONSE_URL,
    FakeSlack,
)
from tests.waits import until

PARTY = f"slack-{CHANNEL_ID}"
FIRST, SECOND = "concordia_question_1", "concordia_question_2"
_WAIT_S = 60.0
# Anything that would ping or link on Slack: a user, channel or group mention, <!here>, a URL.
_PING = re.compile(r"<[@#!]|<https?:")


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


def _question(**changes: Any) -> QuestionAsked:
    fields: dict[str, Any] = {
        "question_id": 7,
        "batch_id": 3,
        "kind": QuestionKind.CHOICE,
        "header": "Choice",
        "text": "Which database?",
        "options": (
            QuestionOption("SQLite", "one file, no server"),
            QuestionOption("Postgres", "a server"),
        ),
        "multi_select": False,
        "answerers": Answerers.AUTHORS,
        "mention": (Author("slack", ALICE_ID, "alice"),),
        "timeout_s": 600.0,
    }
    return QuestionAsked(**(fields | changes))


def _plan(**changes: Any) -> QuestionAsked:
    return _question(
        kind=QuestionKind.PLAN,
        header="Plan",
        text="Claude's plan is above. Approve it, or reject it with feedback.",
        options=(QuestionOption("Approve"), QuestionOption("Reject")),
        answerers=Answerers.APPROVERS,
        **changes,
    )


def _texts(blocks: list[dict[str, Any]]) -> list[str]:
    """Every mrkdwn/plain text in ``blocks``, in order (sections, context elements, buttons)."""
    found = []
    for block in blocks:
        if "text" in block:
            found.append(block["text"]["text"])
        for element in block.get("elements", []):
            text = element.get("text")
            found.append(text["text"] if isinstance(text, dict) else str(text))
    return found


def _buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        element
        for block in message["blocks"] or []
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def _sink(fake: FakeSlack) -> SlackSink:
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
    return SlackSink(client, max_message_chars=3500, edit_interval_s=0.05)


async def _thread(fake: FakeSlack) -> str:
    """A member's mention to hang the question under; returns its ``"C/TS"`` thread."""
    envelope = await fake.send_mention(ALICE_ID, "start")
    return f"{CHANNEL_ID}/{envelope['payload']['event']['ts']}"


def _reply(fake: FakeSlack, thread: str) -> dict[str, Any]:
    (reply,) = fake.messages(CHANNEL_ID, thread_ts=thread.split("/")[1])[1:]
    return reply


# -- SlackSink: the question and how it ended --------------------------------------------------


async def test_a_question_has_a_button_per_option_and_pings_each_slack_author_once(
    fake_slack: FakeSlack,
) -> None:
    thread = await _thread(fake_slack)
    question = _question(
        text="Which <!channel> database & why?",
        options=(
            QuestionOption("SQLite <@U0BOB00001>", "one file, <https://evil.example|x>"),
            QuestionOption("Postgres", "a server"),
        ),
        mention=(
            Author("slack", ALICE_ID, "alice"),
            Author("slack", ALICE_ID, "alice, again"),
            Author("websocket", BOB_ID, "bob"),  # not a Slack user: never mentioned
            Author("slack", "U0BOB00001> <!channel", "forged"),  # not a Slack id: dropped
        ),
    )
    sink = _sink(fake_slack)
    assert isinstance(sink, QuestionSink)

    ref = await sink.post_question(thread, question)

    reply = _reply(fake_slack, thread)
    assert ref == f"{CHANNEL_ID}:{reply['ts']}"
    request, options, how, _ = reply["blocks"]
    assert request["text"]["text"] == (
        "❓ *Question 7* (Choice): Which &lt;!channel&gt; database &amp; why?"
    )
    assert options["text"]["text"].splitlines() == [
        "1. SQLite &lt;@U0BOB00001&gt;: one file, &lt;https://evil.example|x&gt;",
        "2. Postgres: a server",
    ]
    assert "/concordia answer 7 &lt;number or your own words&gt;" in how["elements"][0]["text"]
    assert [(b["action_id"], b["text"]["text"], b["value"]) for b in _buttons(reply)] == [
        (FIRST, "SQLite &lt;@U0BOB00001&gt;", "7"),
        (SECOND, "Postgres", "7"),
    ]
    assert all("style" not in b for b in _buttons(reply)), "no option is singled out"
    for shown in (reply["text"], "\n".join(_texts(reply["blocks"]))):
        assert shown.count(f"<@{ALICE_ID}>") == 1, "the author is pinged once"
        assert _PING.findall(shown.replace(f"<@{ALICE_ID}>", "")) == [], "and nobody else"
    assert "Question 7" in reply["text"]
    assert (reply["unfurl_links"], reply["unfurl_media"]) == (False, False)


async def test_a_plan_has_approve_and_reject_and_says_how_to_reject_with_feedback(
    fake_slack: FakeSlack,
) -> None:
    thread = await _thread(fake_slack)
    await _sink(fake_slack).post_question(thread, _plan())
    reply = _reply(fake_slack, thread)
    request, how, _ = reply["blocks"]
    assert request["text"]["text"].startswith("📋 *Plan 7*: Claude's plan is above.")
    assert "/concordia answer 7 &lt;your feedback&gt;" in how["elements"][0]["text"]
    assert [(b["action_id"], b["text"]["text"], b.get("style")) for b in _buttons(reply)] == [
        (FIRST, "Approve", "primary"),
        (SECOND, "Reject", "danger"),
    ]


async def test_many_long_options_stay_within_block_kits_limits(fake_slack: FakeSlack) -> None:
    thread = await _thread(fake_slack)
    options = tuple(QuestionOption(f"{n} " + "&" * 99) for n in range(1, 31))
    await _sink(fake_slack).post_question(thread, _question(options=options))
    buttons = _buttons(_reply(fake_slack, thread))
    assert [b["action_id"] for b in buttons] == [f"concordia_question_{n}" for n in range(1, 26)]
    assert all(len(b["text"]["text"]) <= 75 for b in buttons)
    assert buttons[0]["text"]["text"].endswith("&amp;…"), "no entity is cut in half"
    listed = _reply(fake_slack, thread)["blocks"][1]["text"]["text"]
    assert len(listed) <= 3000


async def test_closing_keeps_the_question_drops_the_buttons_and_shows_who_answered(
    fake_slack: FakeSlack,
) -> None:
    sink = _sink(fake_slack)
    outcomes = []
    for answered, text in ((True, "bob answered: <@U0BOB00001>"), (False, "nobody answered")):
        thread = await _thread(fake_slack)
        question = _question()
        ref = await sink.post_question(thread, question)
        posted = _reply(fake_slack, thread)
        await sink.close_question(ref, question, QuestionClosed(7, 3, answered, text))
        closed = _reply(fake_slack, thread)
        assert closed["blocks"][:2] == posted["blocks"][:2], "the same question"
        assert _buttons(closed) == []
        assert _PING.search(closed["text"] + "\n".join(_texts(closed["blocks"]))) is None
        outcomes.append(closed["blocks"][-1]["elements"][0]["text"])
    assert outcomes == ["✅ bob answered: &lt;@U0BOB00001&gt;", "⌛ nobody answered"]


# -- end to end: `concordia run`, the real claude CLI ------------------------------------------


async def _tokens(bot: BotProcess) -> tuple[str, str]:
    """The Slack party's prompter and host tokens, as `concordia run` prints them."""
    line = await bot.line_starting(f"party '{PARTY}'")
    prompter = line.split("/concordia join ")[1].split()[0]
    host = line.split("(host: ")[1].split(")")[0]
    return prompter, host


def _question_message(fake: FakeSlack, thread_ts: str) -> dict[str, Any] | None:
    """The question in the thread (the bot's message with question blocks), if any."""
    return next(
        (
            m
            for m in fake.messages(CHANNEL_ID, thread_ts=thread_ts)[1:]
            if m["user"] == BOT_USER_ID
            and any(b.get("block_id") == "concordia_question_request" for b in m["blocks"] or [])
        ),
        None,
    )


def _outcome(message: dict[str, Any] | None) -> str:
    """The closed question's outcome line, unescaped; "" while it is open."""
    if message is None or _buttons(message):
        return ""
    last = message["blocks"][-1]
    return html.unescape(str(last["elements"][0]["text"])) if last["type"] == "context" else ""


def _shown(fake: FakeSlack, thread_ts: str) -> str:
    """Everything the bot showed in the thread (texts and block texts), unescaped."""
    parts = []
    for message in fake.messages(CHANNEL_ID, thread_ts=thread_ts)[1:]:
        parts.append(message["text"])
        parts.extend(_texts(message["blocks"] or []))
    return html.unescape("\n".join(parts))


def _sent_to_claude(api: FakeAnthropic) -> str:
    """Every request body the API received, as one JSON text."""
    return "\n".join(json.dumps(turn.body) for turn in api.turns)


def _tool_results(api: FakeAnthropic) -> list[dict[str, Any]]:
    """The tool_result blocks of the latest request that carried any."""
    for turn in reversed(api.turns):
        found = [
            block
            for message in turn.body.get("messages", [])
            if message.get("role") == "user" and isinstance(message.get("content"), list)
            for block in message["content"]
            if block.get("type") == "tool_result"
        ]
        if found:
            return found
    return []


async def _asked(
    fake: FakeSlack, bot: BotProcess, user: str, text: str
) -> tuple[str, dict[str, Any]]:
    """``user`` mentions the bot with ``text``; the thread and the question posted in it."""
    mention = await fake.send_mention(user, text)
    thread_ts = mention["payload"]["event"]["ts"]
    try:
        await until(
            lambda: _question_message(fake, thread_ts) is not None,
            fake.requests,
            within_s=_WAIT_S,
        )
    except AssertionError:
        raise AssertionError("no question:\n" + "".join(bot.log[-40:])) from None
    message = _question_message(fake, thread_ts)
    assert message is not None
    return thread_ts, message


async def _ephemeral_to(fake: FakeSlack, user: str, after: int) -> dict[str, Any]:
    """The first ephemeral message to ``user`` among those from index ``after`` on."""

    def found() -> list[dict[str, Any]]:
        return [e for e in fake.ephemerals[after:] if e["user"] == user]

    await until(found, fake.requests, within_s=_WAIT_S, what=f"an ephemeral to {user}")
    return found()[0]


async def _click(fake: FakeSlack, user: str, message: dict[str, Any], action_id: str) -> int:
    """``user`` clicks ``action_id``, acked within Slack's deadline; the index the clicker's
    answer will have among the ephemerals."""
    answered = len(fake.ephemerals)
    click = await fake.click_button(user, message["ts"], action_id)
    ack = await fake.wait_ack(click["envelope_id"], ACK_DEADLINE_S)
    assert ack.elapsed_s < ACK_DEADLINE_S
    return answered


async def _closed(fake: FakeSlack, thread_ts: str, marker: str) -> str:
    """The question's outcome once it is closed and Claude's reply after it (``marker``) is
    shown."""
    await until(
        lambda: _outcome(_question_message(fake, thread_ts)) and marker in _shown(fake, thread_ts),
        fake.requests,
        within_s=_WAIT_S,
        what=f"the question closed and {marker!r} shown",
    )
    return _outcome(_question_message(fake, thread_ts))


async def _slash(fake: FakeSlack, user: str, text: str) -> str:
    """``user`` runs ``/concordia text``; the answer they got."""
    await fake.send_slash_command(user, text)
    async with asyncio.timeout(_WAIT_S):
        return str((await fake.next_call(RESPONSE_URL)).params.get("text", ""))


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_a_question_answered_with_a_button_reaches_claude_and_shows_who_answered(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        prompter, _ = await _tokens(bot)
        assert "Welcome" in await join(fake_slack, ALICE_ID, prompter)
        thread_ts, message = await _asked(fake_slack, bot, ALICE_ID, "TOOL_ASK Which database?")
        assert [b["text"]["text"] for b in _buttons(message)] == ["SQLite", "Postgres"]
        question_id = _buttons(message)[0]["value"]
        for shown in (message["text"], "\n".join(_texts(message["blocks"]))):
            assert shown.count(f"<@{ALICE_ID}>") == 1, "the author is pinged once"
            assert _PING.findall(shown.replace(f"<@{ALICE_ID}>", "")) == []

        hinted = await _click(fake_slack, BOB_ID, message, SECOND)  # bob has not joined
        hint = await _ephemeral_to(fake_slack, BOB_ID, hinted)
        assert "not joined" in hint["text"]
        assert "/concordia join &lt;token&gt;" in hint["text"]

        answered = await _click(fake_slack, ALICE_ID, message, FIRST)
        outcome = await _closed(fake_slack, thread_ts, "TOOL RESULT")

        assert outcome == "✅ alice answered: SQLite", "the hint counted for nothing"
        answer = await _ephemeral_to(fake_slack, ALICE_ID, answered)
        assert answer["text"] == f"question {question_id}: alice answered: SQLite"
        assert answer["thread_ts"] == thread_ts, "told in the question's thread"
        assert '\\"Which database?\\"=\\"SQLite\\"' in _sent_to_claude(fake_api)
        closed = _question_message(fake_slack, thread_ts)
        assert closed is not None
        assert closed["blocks"][:2] == message["blocks"][:2], "the question is kept"
    finally:
        await bot.stop()


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_a_prompter_who_is_no_author_is_refused_and_the_question_stays_open(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        prompter, _ = await _tokens(bot)
        assert "Welcome" in await join(fake_slack, ALICE_ID, prompter)
        assert "Welcome" in await join(fake_slack, BOB_ID, prompter)
        thread_ts, message = await _asked(fake_slack, bot, ALICE_ID, "TOOL_ASK Which database?")
        question_id = _buttons(message)[0]["value"]

        refused = await _click(fake_slack, BOB_ID, message, FIRST)
        refusal = await _ephemeral_to(fake_slack, BOB_ID, refused)

        assert "only the authors of this batch" in refusal["text"], "the reason is given"
        assert refusal["thread_ts"] == thread_ts
        still = _question_message(fake_slack, thread_ts)
        assert still is not None
        assert still["text_history"] == [message["text"]], "the question is unchanged"
        assert len(_buttons(still)) == 2
        assert _tool_results(fake_api) == [], "Claude got no answer"

        # Still waiting: its author answers in her own words with the slash command.
        said = await _slash(fake_slack, ALICE_ID, f"answer {question_id} Postgres, for growth")
        assert "alice answered: Postgres, for growth" in html.unescape(said)
        outcome = await _closed(fake_slack, thread_ts, "TOOL RESULT")
        assert outcome == "✅ alice answered: Postgres, for growth"
        assert '\\"Which database?\\"=\\"Postgres, for growth\\"' in _sent_to_claude(fake_api)
    finally:
        await bot.stop()


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_a_plan_is_approved_by_an_approvers_button_not_by_a_prompters(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        prompter, host = await _tokens(bot)
        assert "Welcome" in await join(fake_slack, ALICE_ID, prompter)
        assert "Welcome" in await join(fake_slack, BOB_ID, host)
        thread_ts, plan = await _asked(
            fake_slack, bot, ALICE_ID, "/plan TOOL_PLAN add a users table"
        )
        assert [(b["text"]["text"], b.get("style")) for b in _buttons(plan)] == [
            ("Approve", "primary"),
            ("Reject", "danger"),
        ]
        assert "1. add a users table" in _shown(fake_slack, thread_ts), "the plan is shown"
        assert plan["text"].count(f"<@{ALICE_ID}>") == 1, "its author is pinged once"

        refused = await _click(fake_slack, ALICE_ID, plan, FIRST)
        refusal = await _ephemeral_to(fake_slack, ALICE_ID, refused)
        assert "only approvers and the host" in refusal["text"]
        assert _outcome(_question_message(fake_slack, thread_ts)) == "", "still open"

        await _click(fake_slack, BOB_ID, plan, FIRST)
        outcome = await _closed(fake_slack, thread_ts, "TOOL RESULT")

        assert outcome == "✅ plan approved by bob"
        assert "User has approved exiting plan mode" in _sent_to_claude(fake_api)
        assert not any(r.get("is_error") for r in _tool_results(fake_api))
    finally:
        await bot.stop()


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_a_plan_rejected_with_feedback_gives_claude_the_words(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        prompter, host = await _tokens(bot)
        assert "Welcome" in await join(fake_slack, ALICE_ID, prompter)
        assert "Welcome" in await join(fake_slack, BOB_ID, host)
        thread_ts, plan = await _asked(
            fake_slack, bot, ALICE_ID, "/plan TOOL_PLAN add a users table"
        )
        plan_id = _buttons(plan)[0]["value"]

        said = await _slash(fake_slack, BOB_ID, f"answer {plan_id} keep the old schema")
        outcome = await _closed(fake_slack, thread_ts, "TOOL ERROR")

        assert "plan rejected by bob" in html.unescape(said)
        assert outcome == "✅ plan rejected by bob: keep the old schema"
        (result,) = _tool_results(fake_api)
        assert result.get("is_error") is True
        assert "keep the old schema" in json.dumps(result["content"])
        assert "User has approved exiting plan mode" not in _sent_to_claude(fake_api)
    finally:
        await bot.stop()
