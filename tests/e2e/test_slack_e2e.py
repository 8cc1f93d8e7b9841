"""`concordia run` with the Slack bridge: the real slack-bolt over Socket Mode against the
fake Slack, the real `claude` CLI against the fake Anthropic API.

What every chat does alike (mentions acked, merged and streamed into a thread, hints, inert
mass mentions, files, rate limits, a refreshed or dropped socket, a redelivery, kill -9) is
told once in `test_scenarios.py`; this file keeps what only Slack does: doctor's scope check
and a slash command acked within 3 s while a turn runs."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.e2e.drivers import SLACK_PARTY, party_tokens, slack_config
from tests.e2e.harness import BotProcess
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.slack_api import (
    ALICE_ID,
    APP_TOKEN,
    BOT_TOKEN,
    CHANNEL_ID,
    RESPONSE_URL,
    FakeSlack,
)

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

PARTY = SLACK_PARTY


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


async def start_bot(
    tmp_path: Path, api: FakeAnthropic, slack: FakeSlack, **slack_settings: object
) -> BotProcess:
    config = slack_config(tmp_path, api, slack, **slack_settings)
    env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN}
    bot = BotProcess(config, tmp_path, env=env)
    await bot.start()
    return bot


async def party_token(bot: BotProcess) -> str:
    prompter, _ = await party_tokens(bot, PARTY)
    return prompter


async def join(slack: FakeSlack, user: str, token: str) -> str:
    await slack.send_slash_command(user, f"join {token}")
    async with asyncio.timeout(10):
        call = await slack.next_call(RESPONSE_URL)
    return str(call.params.get("text", ""))


def thread_texts(slack: FakeSlack, ts: str) -> list[str]:
    return [m["text"] for m in slack.messages(CHANNEL_ID, thread_ts=ts)[1:]]


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
