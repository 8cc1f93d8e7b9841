"""Stories every transport tells alike, told once and run over each (see `drivers.py`).

`concordia run` is a real subprocess; the chats are the real discord.py and slack-bolt
against `FakeDiscord` and `FakeSlack`, the terminals protocol-v1 clients; the real `claude`
CLI answers from `FakeAnthropic`. Each story ends by checking the platform's rules over
everything the bot posted (`Driver.rule_problems`).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.drivers import (
    CHATS,
    FENCE_LINE,
    TRANSPORTS,
    File,
    Limit,
    Sent,
    assert_each_answered_once,
    echo,
    every_turn_answered,
    fences_balanced,
    open_driver,
    squash,
)
from tests.fakes.anthropic_api import LONG_REPLY, FakeAnthropic

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

# The fake API's SLOW reply: the echo, then one " ." per step.
SLOW_DELTA = " ."
# A 429's retry is on time if it arrives no earlier than retry_after minus this.
PACING_TOLERANCE_S = 0.05
PASTED = "line one of the paste\nPASTED-MARKER-7f3 and the rest of it\n"
SNIPPET = "def snippet():\n    return 'SNIPPET-MARKER-9c1'\n"
ZIP = b"PK\x03\x04" + bytes(range(256))  # images go to Claude as images (test_*_e2e.py)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_prompts_sent_during_a_turn_are_merged_into_the_next_batch(
    transport: str, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with open_driver(transport, fake_api, tmp_path) as d:
        assert await d.join("alice")
        assert await d.join("bob")
        busy = await d.prompt("alice", "SLOW keep Claude busy")
        await asyncio.wait_for(fake_api.first_delta.wait(), 30)
        a = await d.prompt("alice", "make the login test pass")
        b = await d.prompt("bob", "please make the login test pass")
        assert [s.accepted for s in (busy, a, b)] == [True, True, True]

        await d.until(lambda: "ECHO:" in d.answer(a), "the merged batch's answer")
        await d.until(lambda: d.finished(a), "the merged batch's end")

        assert sum("login test" in t.user_text for t in fake_api.turns) == 1, "one merged turn"
        merged = d.batch_of(a)
        assert merged != d.batch_of(busy), "held for the next batch"
        assert d.sources_in(merged) == [a.source_id, b.source_id], "both, and only them"
        assert d.authors(a) == {"alice", "bob"}, d.headers(a)
        assert [d.queued_marks(s) for s in (busy, a, b)] == [1, 1, 1]
        if d.links_merged:  # the other merged mention is pointed at the answer's thread
            await d.until(lambda: d.linked_thread(b), "a link to the merged batch's thread")
            assert d.linked_thread(b) == a.key
        assert d.rule_problems() == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", CHATS)
async def test_a_non_member_gets_one_hint_and_mass_mentions_are_posted_inert(
    transport: str, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with open_driver(transport, fake_api, tmp_path) as d:
        assert await d.join("alice")
        first = await d.send("bob", "please run the bravo job")
        second = await d.send("bob", "again: run the bravo job")
        assert [(await d.settled(s)).accepted for s in (first, second)] == [False, False]
        shout = await d.prompt(
            "alice", f"tell {' and '.join(d.mass_mentions)} that the build is green"
        )

        await d.until(lambda: "build is green" in d.answer(shout), "the shout's answer")
        # On Slack the hint is sent after the ack; the shout's answer may come before it.
        hints = await d.until(d.hints, "the hint")

        assert len(hints) == 1, "one hint for two mentions"
        assert (hints[0].user, hints[0].is_private) == ("bob", True), hints
        assert "not joined" in hints[0].text
        assert d.marked() == {shout.key}, "only the member's mention was queued"
        assert d.marks(shout) == [d.queued_mark]
        assert [t for t in fake_api.turns if "bravo" in t.user_text] == [], "nothing queued"
        assert d.stored_prompts() == [shout.source_id]

        (turn,) = fake_api.turns
        assert d.mass_mentions[0] in turn.user_text, "Claude's output (the echo) has it"
        posted = d.answer_raw(shout)
        for raw in d.mass_mentions:
            assert raw not in posted
            assert d.inert(raw) in posted
        assert d.rule_problems() == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", CHATS)
async def test_text_files_are_read_into_the_prompt_and_other_files_named(
    transport: str, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    files = [
        File("notes.txt", PASTED.encode()),
        File("snippet.py", SNIPPET.encode(), is_snippet=True),
        File("bundle.zip", ZIP),
    ]
    async with open_driver(transport, fake_api, tmp_path) as d:
        assert await d.join("alice")
        assert (await d.prompt("alice", "summarise the attached", files)).accepted
        turn = await d.turn(0)

        assert "summarise the attached" in turn.user_text
        assert "PASTED-MARKER-7f3" in turn.user_text, "the text file was read into the prompt"
        assert "SNIPPET-MARKER-9c1" in turn.user_text, "the snippet was read into the prompt"
        assert "bundle.zip" in turn.user_text, "the other file is named"
        assert "PK\x03\x04" not in turn.user_text
        downloads = d.downloads()  # None where the fake cannot see them
        if downloads is not None:
            assert downloads == [200, 200], "only the text files were fetched"
        assert d.rule_problems() == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", CHATS)
async def test_a_long_reply_with_code_blocks_is_split_with_balanced_fences(
    transport: str, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with open_driver(transport, fake_api, tmp_path) as d:
        assert await d.join("alice")
        sent = await d.prompt("alice", "LONG walk me through every step")
        expected = squash(LONG_REPLY)

        await d.until(lambda: squash(d.answer(sent)) == expected, "the whole reply shown")

        assert [v for v in d.versions(sent) if not fences_balanced(v)] == []
        outputs = d.output_messages(sent)
        bound = math.ceil(len(LONG_REPLY) / d.max_message_chars) + 1
        assert len(outputs) <= bound, [len(m) for m in outputs]
        assert d.rule_problems() == []


@dataclass(frozen=True, slots=True)
class RateLimitedStream:
    """A reply that streams long enough for creates and edits to meet the ``limits``."""

    prompt: str
    api: dict[str, Any]
    platform: dict[str, Any]
    limits: tuple[Limit, ...]
    reply: Callable[[str], str]  # the whole reply, from the text Claude received


RATE_LIMITED_STREAMS = [
    pytest.param(
        "discord",
        # Just over one message long: edited in place for seconds, then a second message
        # is created, so both routes are hit while the reply streams.
        RateLimitedStream(
            prompt="SLOW stream past the rate limits",
            api={"slow_interval_s": 0.01, "slow_steps": 1050},
            platform={},
            limits=(
                Limit("create", 0.3),
                Limit("create", 0.2, "global"),
                Limit("edit", 0.3),
                Limit("edit", 0.3),
                Limit("edit", 0.2, "global"),
            ),
            reply=lambda text: echo(text) + SLOW_DELTA * 1050,
        ),
        id="discord",
    ),
    pytest.param(
        "slack",
        # Paced deltas (about 6 s for LONG_REPLY): updated in place while it streams and
        # split into several messages, so both methods are hit mid-stream.
        RateLimitedStream(
            prompt="LONG walk me through every step",
            api={"long_interval_s": 0.1},
            platform={"max_message_chars": 1000},
            limits=(Limit("create", 1), Limit("edit", 1), Limit("edit", 1, "in_body")),
            reply=lambda _: LONG_REPLY,
        ),
        id="slack",
    ),
]


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("transport", "stream"), RATE_LIMITED_STREAMS)
async def test_rate_limits_mid_stream_lose_no_text_and_are_waited_out(
    transport: str, stream: RateLimitedStream, tmp_path: Path
) -> None:
    async with (
        FakeAnthropic(**stream.api) as api,
        open_driver(transport, api, tmp_path, **stream.platform) as d,
    ):
        assert await d.join("alice")
        sent = await d.prompt("alice", stream.prompt)
        await d.until(lambda: d.requests_of("edit"), "the reply edited in place")
        for limit in stream.limits:  # per kind, they are served in this order
            d.rate_limit(limit)
        (turn,) = api.turns
        reply = stream.reply(turn.user_text)

        await d.until(lambda: squash(d.answer(sent)) == squash(reply), "the whole reply", 120)

        outputs = d.output_messages(sent)
        if FENCE_LINE.search(reply):
            assert len(outputs) > 1, "the reply was split"
        else:  # without fences, a split adds nothing: the text and the count are exact
            assert d.answer(sent) == reply
            assert len(outputs) == math.ceil(len(reply) / d.max_message_chars)
        assert d.rate_limited_count() == len(stream.limits)
        for kind in ("create", "edit"):
            told = [limit for limit in stream.limits if limit.kind == kind]
            calls = d.requests_of(kind)
            limited = [i for i, c in enumerate(calls) if c.is_limited]
            statuses = [200 if limit.how == "in_body" else 429 for limit in told]
            assert [calls[i].status for i in limited] == statuses, kind
            for i, limit in zip(limited, told, strict=True):
                if limit.how == "in_body":
                    continue  # no retry_after was told
                waited_s = calls[i + 1].arrived_at_s - calls[i].arrived_at_s
                assert waited_s >= limit.retry_after_s - PACING_TOLERANCE_S, (
                    f"{kind} retried after {waited_s:.3f}s"
                )
        versions = d.versions(sent)
        assert [v for v in versions if not fences_balanced(v)] == []
        assert [len(v) for v in versions if len(v) > d.max_message_chars] == []
        assert d.rule_problems() == []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_dropped_connection_mid_burst_loses_nothing_and_queues_each_prompt_once(
    transport: str, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    words = iter(
        ["alpha", "bravo", "charlie", "delta", "eagle", "foxtrot", "golf", "hotel", "india"]
    )
    sent: dict[str, Sent] = {}  # by the word each prompt asks about

    async with open_driver(transport, fake_api, tmp_path) as d:

        async def burst(*users: str) -> Sent:
            for user in users:
                word = next(words)
                sent[word] = await d.send(user, f"describe {word} briefly")
            return sent[word]

        assert await d.join("alice")
        assert await d.join("bob")
        for way in d.ways_to_drop:
            await burst("alice", "bob")
            await d.drop(way)
            await burst("alice", "bob")  # sent while the connection is down
            await d.reconnected()
        await d.until(lambda: every_turn_answered(d, sent), "every prompt answered")

        # At-least-once delivery: the same prompt arrives twice.
        await d.redeliver(await burst("alice"))
        await d.until(lambda: every_turn_answered(d, sent), "every prompt answered")

        assert_each_answered_once(d, sent)
        assert d.rule_problems() == []


@pytest.mark.timeout(150)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_kill_9_mid_stream_reruns_the_batch_once_and_answers_every_prompt_once(
    transport: str, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with open_driver(transport, fake_api, tmp_path) as d:
        assert await d.join("alice")
        first = await d.prompt("alice", "SLOW write the release notes")
        # Mid-stream: the echo and some of the dots have been shown.
        await d.until(
            lambda: "ECHO:" in d.answer(first) and d.answer(first).count(".") >= 3,
            "the reply mid-stream",
        )
        second = await d.prompt("alice", "then tag the release")
        assert (first.accepted, second.accepted) == (True, True)
        await d.kill()
        assert sorted(d.prompt_states()) == ["pending", "sent"]

        await d.restart()
        await d.until(lambda: d.prompt_states() == ["done", "done"], "both answered", 90)

        turns = [t.user_text for t in fake_api.turns]
        assert sum("release notes" in t for t in turns) == 2, "ran, then was re-run once"
        assert sum("tag the release" in t for t in turns) == 1
        attempts = [a for (a,) in d.rows("SELECT attempts FROM batches ORDER BY id")]
        assert attempts[0] == 2, "the batch sent when the bot died was re-run once"
        (per_prompt,) = d.rows("SELECT COUNT(DISTINCT batch_id), COUNT(*) FROM prompts")
        assert per_prompt in ((1, 2), (2, 2))
        assert d.stored_prompts() == [first.source_id, second.source_id]
        if d.keeps_history:  # a chat thread shows the re-run, and says so
            answer = echo([t for t in turns if "release notes" in t][-1]) + SLOW_DELTA * 50
            await d.until(lambda: answer in d.answer(first), "the re-run's whole answer")
            assert sum(answer in t for t in d.texts()) == 1, "the completed answer is shown once"
            told = [t for t in d.texts() if "re-run" in t or "restart" in t]
            assert told, "the thread says the batch was cut off and re-run"
            assert any("re-run" in h for h in d.headers(first)), d.headers(first)
        assert d.rule_problems() == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_usage_limit_holds_the_queue_and_everything_is_answered_once_after_it(
    transport: str, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    """The API says the usage limit is reached (and when it resets): the party says so, keeps
    taking prompts, and at the reset runs the refused batch again, then what came meanwhile."""
    async with open_driver(transport, fake_api, tmp_path) as d:
        assert await d.join("alice")
        assert await d.join("bob")
        limited = await d.prompt("alice", "LIMIT_USAGE write the changelog")
        await d.until(
            lambda: any("usage limit is reached" in t for t in d.notices()), "the hold announced"
        )
        during = await d.prompt("bob", "and bump the version")
        assert (limited.accepted, during.accepted) == (True, True)
        await d.until(lambda: d.prompt_states() == ["done", "done"], "both answered", 60)

        turns = [t.user_text for t in fake_api.turns]
        assert turns[0] == "LIMIT_USAGE write the changelog", "refused once"
        assert "re-sent" in turns[1], "the same batch again, said to be a re-send"
        assert sum("bump the version" in t for t in turns) == 1
        held = [t for t in d.notices() if "usage limit is reached" in t]
        assert "the queue is held until" in held[0]
        await d.until(lambda: echo(turns[-1]) in d.answer(during), "the later prompt's answer")
        assert sum(echo(turns[-1]) in t for t in d.texts()) == 1, "answered once"
        assert d.rule_problems() == []


@pytest.mark.timeout(150)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_question_open_when_the_bot_is_killed_is_asked_again_and_answered_once(
    transport: str, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with open_driver(transport, fake_api, tmp_path) as d:
        assert await d.join("alice")
        asked = await d.prompt("alice", "TOOL_ASK Which database?")
        assert asked.accepted
        (first,) = await d.until(d.open_questions, "Claude's question")
        await d.kill()
        await d.restart()

        def asked_again() -> list[int]:
            return [q for q in d.open_questions() if q != first]

        (second,) = await d.until(asked_again, "the question asked again after the restart")
        outcome = d.rows("SELECT outcome FROM questions WHERE id = ?", (first,))
        assert outcome == [("abandoned",)]
        told = await d.answer_question("alice", second, "2")
        assert f"question {second}: alice answered: postgres" in told.lower(), told
        await d.until(lambda: d.prompt_states() == ["done"], "the batch answered", 60)

        answered = [
            t
            for t in fake_api.turns
            if '\\"Which database?\\"=\\"Postgres\\"' in json.dumps(t.body)
        ]
        assert len(answered) == 1, "the answer reached Claude once"
        assert d.open_questions() == []
        if d.keeps_history:  # a chat thread says why Claude asks again
            said = f"question {first} was left unanswered: Claude will ask again"
            assert any(said in n for n in d.notices()), d.notices()
        assert d.rule_problems() == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_merged_batchs_cost_is_split_and_a_member_over_budget_is_refused(
    transport: str, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    """Two members' prompts merged into one turn share its cost; past the daily budget the
    next prompt is refused with when it resets."""
    budget = {"budget": {"member_daily_usd": 0.000001}}
    async with open_driver(transport, fake_api, tmp_path, sections=budget) as d:
        assert await d.join("alice")
        assert await d.join("bob")
        busy = await d.prompt("alice", "SLOW keep Claude busy")
        await asyncio.wait_for(fake_api.first_delta.wait(), 30)
        a = await d.prompt("alice", "add a health check")
        b = await d.prompt("bob", "please add a health check")
        assert (busy.accepted, a.accepted, b.accepted) == (True, True, True)
        await d.until(lambda: d.finished(a), "the merged batch's end", 60)

        merged = d.batch_of(a)
        (turn_cost,) = d.rows("SELECT cost_usd FROM turn_costs WHERE batch_id = ?", (merged,))
        shares = d.rows(
            "SELECT s.name, s.cost_usd FROM cost_shares s JOIN turn_costs t ON t.id = s.turn_id"
            " WHERE t.batch_id = ? ORDER BY s.name",
            (merged,),
        )
        assert len({name for name, _ in shares}) == 2, "one share for each author"
        assert [cost for _, cost in shares] == pytest.approx([turn_cost[0] / 2] * 2)
        assert turn_cost[0] > 0

        refused = await d.prompt("alice", "one more thing")
        assert not refused.accepted
        assert refused.reason is not None
        assert "budget" in refused.reason
        assert "midnight" in refused.reason or "resets" in refused.reason, refused.reason
        assert d.rule_problems() == []
