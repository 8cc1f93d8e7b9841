"""`concordia run` with the Slack bridge: the real slack-bolt over Socket Mode against the
fake Slack, the real `claude` CLI against the fake Anthropic API.

What every chat does alike (mentions acked, merged and streamed into a thread, hints, inert
mass mentions, files, rate limits, a refreshed or dropped socket, a redelivery, kill -9) is
told once in `test_scenarios.py`; this file keeps what only Slack does: doctor's scope check,
a slash command acked within 3 s while a turn runs, and shared images fetched with the bot
token and sent to Claude (the files left out told to their sender alone)."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
    FILE_DOWNLOAD,
    RESPONSE_URL,
    FakeSlack,
    SharedFile,
)

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

PARTY = SLACK_PARTY


@pytest.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


async def start_bot(
    tmp_path: Path,
    api: FakeAnthropic,
    slack: FakeSlack,
    *,
    party: dict[str, object] | None = None,
    **slack_settings: object,
) -> BotProcess:
    """`concordia run` on the Slack bridge; ``party`` goes in [party], the rest in [slack]."""
    config = slack_config(tmp_path, api, slack, **slack_settings)
    if party is not None:  # slack_config writes [slack] alone: the same again, with [party]
        slack_section = {
            "channels": [CHANNEL_ID],
            "api_url": slack.api_url,
            "edit_interval_s": 0.05,
        }
        make_settings(tmp_path, api, slack=slack_section | slack_settings, party=party)
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


def _png(side: int, *, compress: bool = True) -> bytes:
    """A real ``side`` x ``side`` RGB PNG; uncompressed it is about 3 * side² bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes((n % 256, 64, 128)) * side for n in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    pixels = zlib.compress(rows, 9 if compress else 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _user_texts(body: dict[str, Any]) -> str:
    """Every text block of the request's user messages, one a line."""
    return "\n".join(
        str(block.get("text", ""))
        for message in body.get("messages", [])
        if message.get("role") == "user" and isinstance(message.get("content"), list)
        for block in message["content"]
        if block.get("type") == "text"
    )


def _image_blocks(api: FakeAnthropic) -> list[dict[str, object]]:
    """The image blocks in the user messages of every request the API received."""
    return [
        block
        for turn in api.turns
        for message in turn.body.get("messages", [])
        if message.get("role") == "user" and isinstance(message.get("content"), list)
        for block in message["content"]
        if block.get("type") == "image"
    ]


@pytest.mark.timeout(120)
async def test_an_image_goes_to_claude_and_the_sender_is_told_which_files_did_not(
    fake_api: FakeAnthropic, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    small, large = _png(2), _png(32, compress=False)
    assert len(small) < 1024 < len(large)
    bot = await start_bot(tmp_path, fake_api, fake_slack, party={"max_image_bytes": 1024})
    try:
        assert "Welcome" in await join(fake_slack, ALICE_ID, await party_token(bot))
        told_before = len(fake_slack.ephemerals)
        files = [
            SharedFile("pixel.png", small),
            SharedFile("photo.png", large),
            SharedFile("bundle.zip", b"PK\x03\x04" + bytes(64)),
        ]
        await fake_slack.send_mention(ALICE_ID, "what is in the picture?", files=files)
        turn = await asyncio.wait_for(fake_api.requests.get(), 60)
        sent = _user_texts(turn.body)

        (image,) = _image_blocks(fake_api)
        assert image["source"] == {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(small).decode("ascii"),
        }
        assert "what is in the picture?" in sent
        assert "[attachment photo.png (image/png, " in sent, "the big image is named"
        assert "[attachment bundle.zip (application/zip, " in sent
        downloads = [c for c in fake_slack.calls if c.method == FILE_DOWNLOAD]
        assert [(c.params["file"], c.status) for c in downloads] == [
            (fake_slack.messages(CHANNEL_ID)[-1]["files"][0]["id"], 200)
        ], "only the image that fits was fetched"

        told = [e for e in fake_slack.ephemerals[told_before:] if e["user"] == ALICE_ID]
        (left_out,) = told
        lines = left_out["text"].splitlines()
        assert lines[0] == "Queued, but not every file went to Claude:"
        assert lines[1].startswith("• photo.png (")
        assert "(party.max_image_bytes)" in lines[1]
        assert lines[2].startswith("• bundle.zip was not included: Claude takes text files")
        assert len(lines) == 3
        assert [e["user"] for e in fake_slack.ephemerals[told_before:]] == [ALICE_ID]
    finally:
        await bot.stop()
