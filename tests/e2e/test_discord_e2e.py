"""`concordia run` with the Discord bridge: the real discord.py against the fake Discord,
the real `claude` CLI against the fake Anthropic API.

What every chat does alike (mentions merged into a thread, hints, inert mass mentions, files,
429s, a dropped gateway, kill -9) is told once in `test_scenarios.py`; this file keeps what
only Discord does: a channel bound to the terminals' party, doctor, an invalidated session,
fatal close codes, ephemeral slash-command answers, images and how a sender is told which
files were left out."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.e2e.drivers import (
    DISCORD_PARTY,
    DiscordDriver,
    Sent,
    assert_each_answered_once,
    discord_config,
    every_turn_answered,
    interaction_reply,
    open_driver,
    party_tokens,
)
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic, RecordedRequest
from tests.fakes.discord_api import (
    ALICE_ID,
    BOB_ID,
    BOT_USER_ID,
    CHANNEL_ID,
    TOKEN,
    FakeDiscord,
    GatewayOp,
)
from tests.waits import until

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

PARTY = DISCORD_PARTY
EPHEMERAL = 1 << 6


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# A real 1x1 RGBA PNG: signature, IHDR, one filtered scanline, IEND.
TINY_PNG = (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0))
    + _png_chunk(b"IDAT", zlib.compress(b"\x00\xff\x80\x00\xff"))
    + _png_chunk(b"IEND", b"")
)


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


def bot_process(tmp_path: Path, api: FakeAnthropic, discord: FakeDiscord) -> BotProcess:
    return BotProcess(
        discord_config(tmp_path, api, discord), tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}
    )


@contextlib.asynccontextmanager
async def running_bot(
    tmp_path: Path, api: FakeAnthropic, discord: FakeDiscord
) -> AsyncIterator[BotProcess]:
    """`concordia run` for the block; its log is printed if the block fails."""
    async with bot_process(tmp_path, api, discord) as bot:
        yield bot


def config_with(
    tmp_path: Path, api: FakeAnthropic, discord: FakeDiscord, **sections: dict[str, object]
) -> Path:
    """config.toml for the Discord bridge against ``discord``, with more ``sections``."""
    make_settings(
        tmp_path,
        api,
        discord={
            "channels": [str(CHANNEL_ID)],
            "api_base": discord.api_base,
            "gateway_url": discord.gateway_url,
            "edit_interval_s": 0.05,
        },
        **sections,
    )
    return tmp_path / "config.toml"


async def party_token(bot: BotProcess) -> str:
    prompter, _ = await party_tokens(bot, PARTY)
    return prompter


async def join(discord: FakeDiscord, user_id: int, token: str) -> str:
    interaction = await discord.send_interaction(
        user_id, subcommand="join", options={"token": token}
    )
    reply = await interaction_reply(discord, interaction)
    return str(reply["content"])


def bot_messages(discord: FakeDiscord, channel_id: int) -> list[dict[str, Any]]:
    """The bot's messages in a channel or thread, oldest first (none if it does not exist)."""
    return [m for m in discord.messages(channel_id) if int(m["author"]["id"]) == BOT_USER_ID]


def replies_to(discord: FakeDiscord, message_id: int) -> list[dict[str, Any]]:
    """The bot's replies to a message in the channel, oldest first."""
    return [
        m
        for m in bot_messages(discord, CHANNEL_ID)
        if int((m.get("message_reference") or {}).get("message_id", 0)) == message_id
    ]


def blocks(turn: RecordedRequest, kind: str) -> list[dict[str, Any]]:
    """The ``kind`` blocks ("text", "image") of a request's last user message."""
    content = [m for m in turn.body["messages"] if m["role"] == "user"][-1]["content"]
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind]


def prompt_text(turn: RecordedRequest) -> str:
    """All the text of a request's last user message (the CLI adds a line after an image)."""
    return "\n".join(b["text"] for b in blocks(turn, "text"))


# -- the cases ------------------------------------------------------------------------------------


async def test_a_channel_bound_to_the_terminals_party_shares_its_claude_session(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    config = discord_config(tmp_path, fake_api, fake_discord, parties={str(CHANNEL_ID): "default"})
    async with BotProcess(config, tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}) as bot:
        assert not any(line.startswith("party '") for line in bot.stdout), "no second party"
        assert "Welcome" in await join(fake_discord, ALICE_ID, bot.invite)
        async with Client(bot.port, bot.invite, "carol") as carol:
            await carol.expect("welcome")
            await carol.prompt("c1", "from the terminal")
            # A terminal's batch shows in the bound channel (its home thread).
            await until(
                lambda: any(
                    "ECHO: from the terminal" in m["content"]
                    for m in fake_discord.messages(CHANNEL_ID)
                ),
                fake_discord.requests,
                within_s=60,
                what="the terminal's batch shown in the channel",
            )
            mention = await fake_discord.send_message(ALICE_ID, "from discord")

            def alices_batch_done(frames: list[dict[str, Any]]) -> bool:
                ids = {
                    f["batch_id"]
                    for f in frames
                    if f["type"] == "batch" and f["sources"][0]["author"] == "Alice"
                }
                return any(f["type"] == "done" and f["batch_id"] in ids for f in frames)

            await carol.until(alices_batch_done, within_s=30)
            batch = next(
                f
                for f in carol.all
                if f["type"] == "batch" and f["sources"][0]["author"] == "Alice"
            )
            outputs = "".join(
                f["text"]
                for f in carol.all
                if f["type"] == "output" and f["batch_id"] == batch["batch_id"]
            )
            assert "ECHO: from discord" in outputs
    assert any(str(mention["id"]) in c.path and "/reactions/" in c.path for c in fake_discord.calls)
    ids = {t.session_id for t in fake_api.turns}
    assert len(ids) == 1, "one Claude session served both transports"


async def test_doctor_names_a_refused_token_and_a_missing_intent(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    config = discord_config(tmp_path, fake_api, fake_discord)

    async def doctor(token: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "doctor", "--config", str(config),
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "DISCORD_BOT_TOKEN": token},
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    code, out = await doctor(TOKEN)
    assert code == 0, out
    assert "✓ Discord" in out
    code, out = await doctor("not-the-token")
    assert code == 1
    assert "$DISCORD_BOT_TOKEN" in out
    assert "not-the-token" not in out
    fake_discord.message_content_intent = False
    code, out = await doctor(TOKEN)
    assert code == 1
    assert "Message Content" in out


@pytest.mark.timeout(150)
async def test_an_invalidated_session_reidentifies_and_loses_no_prompt(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with open_driver("discord", fake_api, tmp_path) as d:
        assert isinstance(d, DiscordDriver)
        assert await d.join("alice")
        mentions: dict[str, Sent] = {}

        async def mention(word: str) -> Sent:
            mentions[word] = await d.send("alice", f"describe {word} briefly")
            return mentions[word]

        await mention("alpha")
        await d.until(lambda: every_turn_answered(d, mentions), "alpha answered")
        old_session = d.fake.session_id
        await mention("bravo")  # on the socket just before the op 9
        await d.fake.invalidate_session()
        # discord.py waits a few seconds before it IDENTIFYs again.
        await d.until(lambda: d.fake.session_id != old_session, "a new session", within_s=60)
        await d.redeliver(await mention("charlie"))

        await d.until(lambda: every_turn_answered(d, mentions), "every mention answered")

        identifies = [f for f in d.fake.gateway_frames if f.op == GatewayOp.IDENTIFY]
        assert len(identifies) == 2, "one fresh IDENTIFY after the invalidation"
        assert_each_answered_once(d, mentions)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("close_code", "named"),
    [(4004, "DISCORD_BOT_TOKEN"), (4014, "Message Content")],
    ids=["4004-bad-token", "4014-disallowed-intent"],
)
async def test_a_fatal_close_code_stops_the_bot_with_a_message_not_a_reconnect_loop(
    close_code: int,
    named: str,
    fake_api: FakeAnthropic,
    fake_discord: FakeDiscord,
    tmp_path: Path,
) -> None:
    fake_discord.close_code_next(close_code)
    bot = bot_process(tmp_path, fake_api, fake_discord)
    try:
        async with asyncio.timeout(30):
            with pytest.raises(RuntimeError, match="concordia run exited"):
                await bot.start()
            exit_code = await bot.wait_exit()
    finally:
        await bot.stop()

    assert exit_code != 0
    log = "".join(bot.log)
    said = [line for line in log.splitlines() if line.startswith("concordia: ")]
    assert any(named in line for line in said), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    identifies = [f for f in fake_discord.gateway_frames if f.op == GatewayOp.IDENTIFY]
    assert len(identifies) == 1, "no second IDENTIFY"


@pytest.mark.timeout(120)
async def test_status_and_queue_answer_ephemerally_and_a_stranger_is_told_to_join(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    async with running_bot(tmp_path, fake_api, fake_discord) as bot:
        assert "Welcome" in await join(fake_discord, ALICE_ID, await party_token(bot))

        async def run(user_id: int, subcommand: str) -> dict[str, Any]:
            interaction = await fake_discord.send_interaction(user_id, subcommand=subcommand)
            return await interaction_reply(fake_discord, interaction)

        status = await run(ALICE_ID, "status")
        queue = await run(ALICE_ID, "queue")
        stranger = await run(BOB_ID, "status")

    assert status["flags"] & EPHEMERAL
    assert f"party {PARTY}" in status["content"]
    assert queue["flags"] & EPHEMERAL
    assert "nobody is waiting" in queue["content"]
    assert stranger["flags"] & EPHEMERAL
    assert "/concordia join" in stranger["content"], stranger["content"]
    assert f"party {PARTY}" not in stranger["content"], "a stranger sees no party state"


async def test_an_image_reaches_claude_as_an_image_block(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    async with running_bot(tmp_path, fake_api, fake_discord) as bot:
        assert "Welcome" in await join(fake_discord, ALICE_ID, await party_token(bot))
        mention = await fake_discord.send_message(
            ALICE_ID, "what colour is this dot?", attachments=[("dot.png", TINY_PNG)]
        )
        turn = await asyncio.wait_for(fake_api.requests.get(), 60)
        thread = int(mention["id"])
        await until(
            lambda: any("ECHO:" in m["content"] for m in bot_messages(fake_discord, thread)),
            fake_discord.requests,
            within_s=60,
            what="the answer shown in the thread",
        )

    (image,) = blocks(turn, "image")
    assert image["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": base64.b64encode(TINY_PNG).decode("ascii"),
    }
    assert "what colour is this dot?" in prompt_text(turn)
    assert "dot.png from Alice" in prompt_text(turn), "Claude is told whose image it is"
    assert replies_to(fake_discord, int(mention["id"])) == [], "nothing was left out"


async def test_an_oversize_image_and_an_unsupported_file_are_named_and_the_sender_told_why(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(2000)
    config = config_with(tmp_path, fake_api, fake_discord, party={"max_image_bytes": 1024})
    async with BotProcess(config, tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}) as bot:
        token = await party_token(bot)
        assert "Welcome" in await join(fake_discord, ALICE_ID, token)
        assert "Welcome" in await join(fake_discord, BOB_ID, token)
        mention = await fake_discord.send_message(
            ALICE_ID,
            "look at these",
            attachments=[("big.png", big), ("build.zip", b"PK\x03\x04" + bytes(100))],
        )
        turn = await asyncio.wait_for(fake_api.requests.get(), 60)
        (told,) = await until(
            lambda: replies_to(fake_discord, int(mention["id"])),
            fake_discord.requests,
            within_s=30,
            what="the sender told what was left out",
        )

    assert "look at these" in turn.user_text
    assert "[attachment big.png (image/png, 2,008 bytes) not included]" in turn.user_text
    assert "[attachment build.zip (application/zip, 104 bytes) not included]" in turn.user_text
    assert blocks(turn, "image") == []
    assert told["content"] == (
        "Queued without some of your files:\n"
        "- big.png (2,008 bytes) is larger than the 1,024 bytes "
        "an image may have (party.max_image_bytes)\n"
        "- build.zip was not included: Claude takes text files and PNG, JPEG, GIF or WebP images"
    )
    assert told["mentions"] == [], "a reply the sender sees, pinging nobody"
    assert told["allowed_mentions_history"] == [{"parse": []}], "a reply that pings nobody"
    assert told["mention_everyone"] is False
