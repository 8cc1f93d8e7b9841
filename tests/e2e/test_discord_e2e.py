"""`concordia run` with the Discord bridge: the real discord.py against the fake Discord,
the real `claude` CLI against the fake Anthropic API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.e2e.harness import BotProcess
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.discord_api import ALICE_ID, BOB_ID, CHANNEL_ID, TOKEN, FakeDiscord

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

PARTY = f"discord-{CHANNEL_ID}"


@dataclass
class DiscordRig:
    bot: BotProcess
    discord: FakeDiscord
    api: FakeAnthropic
    tmp_path: Path
    invite: str = ""


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


def discord_config(tmp_path: Path, api: FakeAnthropic, discord: FakeDiscord, **extra: Any) -> Path:
    make_settings(
        tmp_path,
        api,
        discord={
            "channels": [str(CHANNEL_ID)],
            "api_base": discord.api_base,
            "gateway_url": discord.gateway_url,
            "edit_interval_s": 0.05,
            **extra,
        },
    )
    return tmp_path / "config.toml"


async def start_bot(tmp_path: Path, api: FakeAnthropic, discord: FakeDiscord) -> BotProcess:
    bot = BotProcess(
        discord_config(tmp_path, api, discord), tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}
    )
    await bot.start()
    return bot


async def party_token(bot: BotProcess) -> str:
    line = await bot.line_starting(f"party '{PARTY}'")
    return line.split("/concordia join ")[1].split()[0]


async def join(discord: FakeDiscord, user_id: int, token: str) -> str:
    interaction = await discord.send_interaction(
        user_id, subcommand="join", options={"token": token}
    )
    async with asyncio.timeout(10):
        while True:
            replies = discord.interaction_messages(int(interaction["id"]))
            texts = [r["content_history"][-1] for r in replies if r.get("content_history")]
            if any(t and "thinking" not in t for t in texts):
                return texts[-1]
            await discord.requests.get()


async def wait_for(discord: FakeDiscord, predicate: Any, within_s: float = 60) -> None:
    async with asyncio.timeout(within_s):
        while not predicate():
            await discord.requests.get()


async def test_mention_is_queued_merged_and_streamed_into_a_thread(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    bot = await start_bot(tmp_path, fake_api, fake_discord)
    try:
        token = await party_token(bot)
        assert "Welcome" in await join(fake_discord, ALICE_ID, token)
        assert "Welcome" in await join(fake_discord, BOB_ID, token)
        first = await fake_discord.send_message(ALICE_ID, "SLOW keep Claude busy")
        await asyncio.wait_for(fake_api.first_delta.wait(), 30)
        a = await fake_discord.send_message(ALICE_ID, "make the login test pass")
        b = await fake_discord.send_message(BOB_ID, "please make the login test pass")

        thread_b = int(a["id"])  # the merged batch streams into a thread on its first source

        def answered() -> bool:
            try:
                texts = [m["content"] for m in fake_discord.messages(thread_b)]
            except KeyError:
                return False
            return any("ECHO:" in t for t in texts)

        await wait_for(fake_discord, answered)
        texts = [m["content"] for m in fake_discord.messages(thread_b)]
        header = texts[0]
        assert "alice" in header.lower() or str(ALICE_ID) in header
        assert "bob" in header.lower() or str(BOB_ID) in header
        reactions = [c.path for c in fake_discord.calls if "/reactions/" in c.path]
        assert any(str(first["id"]) in p for p in reactions)
        assert any(str(a["id"]) in p for p in reactions)
        assert any(str(b["id"]) in p for p in reactions)
        posted = [
            c
            for c in fake_discord.calls
            if c.method in ("POST", "PATCH") and c.json and "content" in c.json
        ]
        assert all(len(c.json["content"]) <= 2000 for c in posted)
        assert all(
            c.json.get("allowed_mentions") == {"parse": []} for c in posted if "channels/" in c.path
        )
        assert sum("login test" in t.user_text for t in fake_api.turns) == 1, "one merged turn"
    finally:
        await bot.stop()
