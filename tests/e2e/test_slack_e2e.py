"""`concordia run` with the Slack bridge: the real slack-bolt over Socket Mode against the
fake Slack, the real `claude` CLI against the fake Anthropic API."""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.e2e.harness import BotProcess
from tests.fakes.anthropic_api import LONG_REPLY, FakeAnthropic
from tests.fakes.slack_api import (
    ALICE_ID,
    APP_TOKEN,
    BOB_ID,
    BOT_TOKEN,
    BOT_USER_ID,
    CHANNEL_ID,
    FILE_DOWNLOAD,
    RESPONSE_URL,
    FakeSlack,
    SharedFile,
)

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

PARTY = f"slack-{CHANNEL_ID}"


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


FENCE_LINE = re.compile(r"^[ \t]*```[^\n]*$", re.MULTILINE)


async def start_bot(
    tmp_path: Path, api: FakeAnthropic, slack: FakeSlack, **slack_settings: object
) -> BotProcess:
    make_settings(
        tmp_path,
        api,
        slack={
            "channels": [CHANNEL_ID],
            "api_url": slack.api_url,
            "edit_interval_s": 0.05,
            **slack_settings,
        },
    )
    env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN}
    bot = BotProcess(tmp_path / "config.toml", tmp_path, env=env)
    await bot.start()
    return bot


async def party_token(bot: BotProcess) -> str:
    line = await bot.line_starting(f"party '{PARTY}'")
    return line.split("/concordia join ")[1].split()[0]


async def until(slack: FakeSlack, predicate: Callable[[], bool], within_s: float = 60) -> None:
    async with asyncio.timeout(within_s):
        while not predicate():
            await slack.requests.get()


async def join(slack: FakeSlack, user: str, token: str) -> str:
    await slack.send_slash_command(user, f"join {token}")
    async with asyncio.timeout(10):
        call = await slack.next_call(RESPONSE_URL)
    return str(call.params.get("text", ""))


def thread_texts(slack: FakeSlack, ts: str) -> list[str]:
    return [m["text"] for m in slack.messages(CHANNEL_ID, thread_ts=ts)[1:]]


def output_texts(slack: FakeSlack, ts: str) -> list[str]:
    """The thread's replies as a reader sees them (unescaped), batch headers left out."""
    texts = (html.unescape(t) for t in thread_texts(slack, ts))
    return [t for t in texts if not t.startswith("*Batch ")]  # Slack bold: *Batch N*


def squash(text: str) -> str:
    """``text`` without fence lines and whitespace: what a split must keep, in order."""
    return "".join(FENCE_LINE.sub("", text).split())


def stored_prompts(tmp_path: Path) -> list[str]:
    """The source_id of every stored prompt, read with a separate connection."""
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "concordia.db")) as db:
        return [str(s) for (s,) in db.execute("SELECT source_id FROM prompts ORDER BY id")]


def source_id(envelope: dict[str, Any]) -> str:
    return f"slack:{CHANNEL_ID}:{envelope['payload']['event']['ts']}"


async def test_mentions_are_stored_before_the_ack_merged_and_streamed_into_the_thread(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        token = await party_token(bot)
        assert "Welcome" in await join(fake_slack, ALICE_ID, token)
        assert "Welcome" in await join(fake_slack, BOB_ID, token)

        busy = await fake_slack.send_mention(ALICE_ID, "SLOW keep Claude busy")
        await asyncio.wait_for(fake_api.first_delta.wait(), 30)
        a = await fake_slack.send_mention(ALICE_ID, "make the <!channel> login test pass")
        b = await fake_slack.send_mention(BOB_ID, "please make the login test pass")
        for envelope in (busy, a, b):
            ack = await fake_slack.wait_ack(envelope["envelope_id"], 3.0)
            assert ack.elapsed_s < 3.0
        with sqlite3.connect(tmp_path / "state" / "concordia.db") as db:
            stored = {s for (s,) in db.execute("SELECT source_id FROM prompts")}
        a_ts = a["payload"]["event"]["ts"]
        assert f"slack:{CHANNEL_ID}:{a_ts}" in stored, "acked before it was stored"

        await until(fake_slack, lambda: any("ECHO" in t for t in thread_texts(fake_slack, a_ts)))
        texts = thread_texts(fake_slack, a_ts)
        assert ALICE_ID in texts[0]
        assert BOB_ID in texts[0]
        shown = "\n".join(texts)
        assert "<!channel>" not in shown
        assert "&lt;!channel&gt;" in shown
        posts = [c for c in fake_slack.calls if c.method == "chat.postMessage"]
        assert posts
        assert all(str(c.params.get("unfurl_links")).lower() == "false" for c in posts)
        assert all(len(str(c.params.get("text", ""))) <= 3500 + 200 for c in posts)
        reacted = [c for c in fake_slack.calls if c.method == "reactions.add"]
        assert {c.params.get("timestamp") for c in reacted} >= {a_ts, b["payload"]["event"]["ts"]}
        assert sum("login test" in t.user_text for t in fake_api.turns) == 1, "one merged turn"
    finally:
        await bot.stop()


async def test_a_redelivered_envelope_is_acked_and_not_queued_twice(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        assert "Welcome" in await join(fake_slack, ALICE_ID, await party_token(bot))
        first = await fake_slack.send_mention(ALICE_ID, "only once please")
        await fake_slack.wait_ack(first["envelope_id"], 3.0)
        again = await fake_slack.redeliver(first)
        await fake_slack.wait_ack(again["envelope_id"], 3.0)
        ts = first["payload"]["event"]["ts"]
        await until(fake_slack, lambda: any("ECHO" in t for t in thread_texts(fake_slack, ts)))
        with sqlite3.connect(tmp_path / "state" / "concordia.db") as db:
            (count,) = db.execute("SELECT COUNT(*) FROM prompts").fetchone()
        assert count == 1
        assert sum("only once" in t.user_text for t in fake_api.turns) == 1
    finally:
        await bot.stop()


async def _doctor(tmp_path: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "doctor",
        "--config",
        str(tmp_path / "config.toml"),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_doctor_names_missing_scopes_and_refused_tokens(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    make_settings(
        tmp_path, fake_api, slack={"channels": [CHANNEL_ID], "api_url": fake_slack.api_url}
    )
    good = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN}
    code, out = await _doctor(tmp_path, good)
    assert code == 0, out
    assert "✓ Slack" in out

    fake_slack.scopes.discard("reactions:write")
    code, out = await _doctor(tmp_path, good)
    assert code == 1
    assert "reactions:write" in out

    code, out = await _doctor(tmp_path, {**good, "SLACK_BOT_TOKEN": "xoxb-wrong"})
    assert code == 1
    assert "$SLACK_BOT_TOKEN" in out
    assert "xoxb-wrong" not in out

    code, out = await _doctor(tmp_path, {"SLACK_BOT_TOKEN": "", "SLACK_APP_TOKEN": ""})
    assert code == 1
    assert "empty" in out


@pytest.mark.timeout(150)
async def test_429s_and_in_body_ratelimited_mid_stream_lose_no_text(
    fake_slack: FakeSlack, tmp_path: Path
) -> None:
    # Paced deltas (about 6 s for LONG_REPLY) so the reply is updated in place while it
    # streams and split into several messages: both methods are hit mid-stream.
    max_chars = 1000
    async with FakeAnthropic(long_interval_s=0.1) as api:
        bot = await start_bot(tmp_path, api, fake_slack, max_message_chars=max_chars)
        try:
            assert "Welcome" in await join(fake_slack, ALICE_ID, await party_token(bot))
            mention = await fake_slack.send_mention(ALICE_ID, "LONG walk me through every step")
            ts = mention["payload"]["event"]["ts"]
            async with asyncio.timeout(60):
                await fake_slack.next_call("chat.update")
            fake_slack.rate_limit("chat.postMessage", retry_after=1)
            fake_slack.rate_limit("chat.update", retry_after=1)
            fake_slack.rate_limit("chat.update", in_body=True)
            expected = squash(LONG_REPLY)

            await until(
                fake_slack, lambda: squash("".join(output_texts(fake_slack, ts))) == expected, 120
            )
        finally:
            await bot.stop()

    limited = [(c.method, c.status) for c in fake_slack.calls if c.error == "ratelimited"]
    assert sorted(limited) == [
        ("chat.postMessage", 429),
        ("chat.update", 200),
        ("chat.update", 429),
    ]
    assert fake_slack.rate_limited_count == len(limited)
    assert len(output_texts(fake_slack, ts)) > 1, "the reply was split"
    sent = [c for c in fake_slack.calls if c.method in {"chat.postMessage", "chat.update"}]
    assert all(len(html.unescape(str(c.params["text"]))) <= max_chars for c in sent)
    assert [c.error for c in sent if c.error not in {None, "ratelimited"}] == []
    for message in fake_slack.messages(CHANNEL_ID, thread_ts=ts)[1:]:
        for text in message["text_history"]:
            assert len(FENCE_LINE.findall(html.unescape(text))) % 2 == 0, "balanced fences"


@pytest.mark.timeout(120)
async def test_a_slash_command_is_acked_within_3_s_while_a_turn_runs(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        assert "Welcome" in await join(fake_slack, ALICE_ID, await party_token(bot))
        busy = await fake_slack.send_mention(ALICE_ID, "SLOW keep Claude busy")
        await asyncio.wait_for(fake_api.first_delta.wait(), 30)

        status = await fake_slack.send_slash_command(ALICE_ID, "status")
        ack = await fake_slack.wait_ack(status["envelope_id"], 3.0)
        assert ack.elapsed_s < 3.0
        async with asyncio.timeout(10):
            answer = await fake_slack.next_call(RESPONSE_URL)

        assert answer.params.get("response_type") == "ephemeral"
        assert "running batch" in str(answer.params.get("text")), "status answered mid-turn"
        assert fake_api.in_flight == 1, "the SLOW turn was still running"
        ts = busy["payload"]["event"]["ts"]
        assert not any(t.startswith("⚠") for t in thread_texts(fake_slack, ts))
    finally:
        await bot.stop()


@pytest.mark.timeout(120)
async def test_a_non_member_gets_one_hint_and_mass_mentions_are_posted_inert(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        assert "Welcome" in await join(fake_slack, ALICE_ID, await party_token(bot))
        first = await fake_slack.send_mention(BOB_ID, "please run the bravo job")
        second = await fake_slack.send_mention(BOB_ID, "again: run the bravo job")
        for envelope in (first, second):
            await fake_slack.wait_ack(envelope["envelope_id"], 3.0)
        shout = await fake_slack.send_mention(
            ALICE_ID, f"tell <!channel> and <!here> and <@{BOB_ID}> the build is green"
        )
        ts = shout["payload"]["event"]["ts"]

        await until(fake_slack, lambda: "build is green" in "\n".join(output_texts(fake_slack, ts)))
        # The hint is sent after the ack; the shout's answer came later than both acks.
        async with asyncio.timeout(10):
            while not fake_slack.ephemerals:
                await fake_slack.requests.get()

        hints = [c for c in fake_slack.calls if c.method == "chat.postEphemeral"]
        assert len(hints) == 1, "one hint for two mentions"
        assert hints[0].params.get("user") == BOB_ID
        assert "not joined" in str(hints[0].params.get("text"))
        reacted = {
            c.params.get("timestamp") for c in fake_slack.calls if c.method == "reactions.add"
        }
        assert reacted == {ts}, "only the member's mention was queued"
        assert [t for t in fake_api.turns if "bravo" in t.user_text] == [], "nothing sent"
        assert stored_prompts(tmp_path) == [source_id(shout)]

        (turn,) = fake_api.turns
        assert "<!channel>" in turn.user_text, "Claude's output (the echo) has <!channel>"
        posted = "\n".join(thread_texts(fake_slack, ts))
        for raw in ("<!channel>", "<!here>", f"<@{BOB_ID}>"):
            assert raw not in posted
            assert html.escape(raw, quote=False) in posted
        for call in fake_slack.calls:
            if call.method in {"chat.postMessage", "chat.update"}:
                assert re.search(r"<[!@#]", str(call.params.get("text"))) is None
    finally:
        await bot.stop()


def all_bot_texts(slack: FakeSlack) -> list[str]:
    """Every text the bot has shown in the channel and its threads, unescaped."""
    texts = []
    for top in slack.messages(CHANNEL_ID):
        for message in slack.messages(CHANNEL_ID, thread_ts=top["ts"]):
            if message["user"] == BOT_USER_ID:
                texts.append(html.unescape(message["text"]))
    return texts


def every_turn_answered(slack: FakeSlack, api: FakeAnthropic, words: list[str]) -> bool:
    """Each word reached Claude, and each turn's echo is shown on Slack."""
    turns = [t.user_text for t in api.turns]
    texts = all_bot_texts(slack)
    return all(any(w in t for t in turns) for w in words) and all(
        any(echo(t) in text for text in texts) for t in turns
    )


def echo(user_text: str) -> str:
    """The fake API's reply to a prompt without a trigger."""
    return "ECHO: " + user_text[:200]


async def reconnected(slack: FakeSlack, old_connection: int) -> int:
    """The id of the first socket greeted after ``old_connection``."""
    async with asyncio.timeout(60):  # a dropped socket is noticed at the next ping (10 s)
        while (connection := await slack.next_connection()) <= old_connection:
            pass
    return connection


@pytest.mark.timeout(180)
async def test_a_refresh_and_a_dropped_socket_mid_burst_lose_nothing_and_queue_once(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        token = await party_token(bot)
        assert "Welcome" in await join(fake_slack, ALICE_ID, token)
        assert "Welcome" in await join(fake_slack, BOB_ID, token)
        mentions: dict[str, dict[str, Any]] = {}

        async def mention(author: str, word: str) -> dict[str, Any]:
            mentions[word] = await fake_slack.send_mention(author, f"describe {word} briefly")
            return mentions[word]

        await mention(ALICE_ID, "alpha")
        await mention(BOB_ID, "bravo")
        old = await fake_slack.request_refresh()
        # Sent while the client is away: the fake holds them for the next socket.
        await mention(ALICE_ID, "charlie")
        await mention(BOB_ID, "delta")
        first_new = await reconnected(fake_slack, old)

        await mention(ALICE_ID, "eagle")
        await fake_slack.wait_ack(mentions["eagle"]["envelope_id"], 3.0)
        dropped = await fake_slack.drop_socket()
        assert dropped == first_new
        await mention(BOB_ID, "foxtrot")
        await mention(ALICE_ID, "golf")
        await reconnected(fake_slack, dropped)

        again = await fake_slack.redeliver(mentions["golf"])
        for envelope in [*mentions.values(), again]:
            ack = await fake_slack.wait_ack(envelope["envelope_id"], 30.0)
            assert ack.elapsed_s < 3.0
        assert (await fake_slack.wait_ack(again["envelope_id"], 3.0)).delivery == 2

        await until(fake_slack, lambda: every_turn_answered(fake_slack, fake_api, [*mentions]))

        turns = [t.user_text for t in fake_api.turns]
        for word, envelope in mentions.items():
            assert sum(t.count(word) for t in turns) == 1, f"{word} reached Claude once"
            ts = envelope["payload"]["event"]["ts"]
            reactions = [
                c
                for c in fake_slack.calls
                if c.method == "reactions.add" and c.params.get("timestamp") == ts
            ]
            assert len(reactions) == 1, f"{word} queued once"
        texts = all_bot_texts(fake_slack)
        for turn in turns:
            assert sum(echo(turn) in text for text in texts) == 1, f"one answer to {turn!r}"
        assert sorted(stored_prompts(tmp_path)) == sorted(map(source_id, mentions.values()))
    finally:
        await bot.stop()


@pytest.mark.timeout(120)
async def test_shared_text_files_and_snippets_are_read_into_the_prompt_or_named(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    pasted = "line one of the paste\nPASTED-MARKER-7f3 and the rest of it\n"
    snippet = "def snippet():\n    return 'SNIPPET-MARKER-9c1'\n"
    bot = await start_bot(tmp_path, fake_api, fake_slack)
    try:
        assert "Welcome" in await join(fake_slack, ALICE_ID, await party_token(bot))
        await fake_slack.send_mention(
            ALICE_ID,
            "summarise the attached",
            files=[
                SharedFile("notes.txt", pasted.encode()),
                SharedFile("snippet.py", snippet.encode(), is_snippet=True),
                SharedFile("diagram.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256))),
            ],
        )
        turn = await asyncio.wait_for(fake_api.requests.get(), 30)
    finally:
        await bot.stop()

    assert "summarise the attached" in turn.user_text
    assert "PASTED-MARKER-7f3" in turn.user_text, "the text file was read into the prompt"
    assert "SNIPPET-MARKER-9c1" in turn.user_text, "the snippet was read into the prompt"
    assert "diagram.png" in turn.user_text, "the image is named"
    assert "\x89PNG" not in turn.user_text
    downloads = [c for c in fake_slack.calls if c.method == FILE_DOWNLOAD]
    assert [c.status for c in downloads] == [200, 200], "only the text files were fetched"
