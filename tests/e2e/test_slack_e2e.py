"""`concordia run` with the Slack bridge: the real slack-bolt over Socket Mode against the
fake Slack, the real `claude` CLI against the fake Anthropic API."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.e2e.harness import BotProcess
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.slack_api import (
    ALICE_ID,
    APP_TOKEN,
    BOB_ID,
    BOT_TOKEN,
    CHANNEL_ID,
    RESPONSE_URL,
    FakeSlack,
)

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

PARTY = f"slack-{CHANNEL_ID}"


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


async def start_bot(tmp_path: Path, api: FakeAnthropic, slack: FakeSlack) -> BotProcess:
    make_settings(
        tmp_path,
        api,
        slack={"channels": [CHANNEL_ID], "api_url": slack.api_url, "edit_interval_s": 0.05},
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
