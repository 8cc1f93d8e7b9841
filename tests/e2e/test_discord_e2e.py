"""`concordia run` with the Discord bridge: the real discord.py against the fake Discord,
the real `claude` CLI against the fake Anthropic API."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import LONG_REPLY, FakeAnthropic
from tests.fakes.discord_api import (
    ALICE_ID,
    BOB_ID,
    BOT_USER_ID,
    CHANNEL_ID,
    GUILD_ID,
    TOKEN,
    FakeDiscord,
    GatewayOp,
    RecordedCall,
)

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

SUPPRESS_EMBEDS = 1 << 2
PARTY = f"discord-{CHANNEL_ID}"
MAX_CHARS = 2000
EPHEMERAL = 1 << 6
LOADING = 1 << 7
DM_CHANNEL = 1
QUEUED = "⏳"
ZWSP = "\u200b"
POST = "POST /channels/{channel_id}/messages"
PATCH = "PATCH /channels/{channel_id}/messages/{message_id}"
REACTION = "PUT /channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me"
# A fence line: its first non-blank characters are ``` (CommonMark, as split_message reads it).
FENCE_LINE = re.compile(r"^[ \t]*```[^\n]*$", re.MULTILINE)
# The fake API's SLOW reply: the echo, then one " ." per step.
SLOW_DELTA = " ."
# A 429's retry is on time if it arrives no earlier than retry_after minus this.
PACING_SLACK_S = 0.05


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


def bot_process(tmp_path: Path, api: FakeAnthropic, discord: FakeDiscord) -> BotProcess:
    return BotProcess(
        discord_config(tmp_path, api, discord), tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}
    )


async def start_bot(tmp_path: Path, api: FakeAnthropic, discord: FakeDiscord) -> BotProcess:
    bot = bot_process(tmp_path, api, discord)
    await bot.start()
    return bot


@contextlib.asynccontextmanager
async def running_bot(
    tmp_path: Path, api: FakeAnthropic, discord: FakeDiscord
) -> AsyncIterator[BotProcess]:
    """`concordia run` for the block; its log is printed if the block fails."""
    async with bot_process(tmp_path, api, discord) as bot:
        yield bot


async def party_token(bot: BotProcess) -> str:
    line = await bot.line_starting(f"party '{PARTY}'")
    return line.split("/concordia join ")[1].split()[0]


async def interaction_reply(discord: FakeDiscord, interaction: dict[str, Any]) -> dict[str, Any]:
    """The interaction's answer, once it has replaced the deferred "thinking" message."""
    async with asyncio.timeout(10):
        while True:
            replies = discord.interaction_messages(int(interaction["id"]))
            answered = [r for r in replies if r["content"] and not r["flags"] & LOADING]
            if answered:
                return answered[-1]
            await discord.requests.get()


async def join(discord: FakeDiscord, user_id: int, token: str) -> str:
    interaction = await discord.send_interaction(
        user_id, subcommand="join", options={"token": token}
    )
    reply = await interaction_reply(discord, interaction)
    return str(reply["content"])


async def wait_for(discord: FakeDiscord, predicate: Any, within_s: float = 60) -> None:
    """Wait until ``predicate()`` holds, re-checked on each request the fake Discord gets."""
    try:
        async with asyncio.timeout(within_s):
            while not predicate():
                await discord.requests.get()
    except TimeoutError:
        name = getattr(predicate, "__name__", repr(predicate))
        raise AssertionError(f"{name} did not hold within {within_s:g} s") from None


# -- reading what the bot did -----------------------------------------------------------------


def bot_messages(discord: FakeDiscord, channel_id: int) -> list[dict[str, Any]]:
    """The bot's messages in a channel or thread, oldest first (none if it does not exist)."""
    return [m for m in discord.messages(channel_id) if int(m["author"]["id"]) == BOT_USER_ID]


def is_header(message: dict[str, Any]) -> bool:
    return str(message["content"]).startswith("**Batch ")


def output_messages(discord: FakeDiscord, thread_id: int) -> list[dict[str, Any]]:
    """The bot's messages in a thread that carry Claude's output (batch headers left out)."""
    return [m for m in bot_messages(discord, thread_id) if not is_header(m)]


def output_text(discord: FakeDiscord, thread_id: int) -> str:
    return "".join(m["content"] for m in output_messages(discord, thread_id))


def all_bot_texts(discord: FakeDiscord) -> list[str]:
    """The current text of every message the bot posted, in any channel, thread or DM."""
    channels = dict.fromkeys(int(c.path.split("/")[2]) for c in discord.calls if c.route == POST)
    return [m["content"] for channel in channels for m in bot_messages(discord, channel)]


def content_calls(discord: FakeDiscord) -> list[RecordedCall]:
    """Every request that set a message's text: creates, edits, interaction answers."""
    return [
        c
        for c in discord.calls
        if c.method in ("POST", "PATCH") and isinstance(c.json, dict) and "content" in c.json
    ]


def reactions_on(discord: FakeDiscord, message_id: int | str) -> list[str]:
    """The emoji of every reaction request the bot made on one message."""
    return [
        c.path.split("/")[-2]
        for c in discord.calls
        if c.route == REACTION and c.path.split("/")[4] == str(message_id)
    ]


def squash(text: str) -> str:
    """``text`` without fence lines and whitespace: what a split must keep, in order."""
    return "".join(FENCE_LINE.sub("", text).split())


def fences_balanced(text: str) -> bool:
    return len(FENCE_LINE.findall(text)) % 2 == 0


def echo(user_text: str) -> str:
    """The fake API's reply to a prompt without a trigger (and a SLOW reply's first delta)."""
    return "ECHO: " + user_text[:200]


def stored_prompts(tmp_path: Path) -> list[str]:
    """The source_id of every stored prompt, read with a separate connection."""
    db_path = tmp_path / "state" / "concordia.db"
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return [str(s) for (s,) in db.execute("SELECT source_id FROM prompts ORDER BY id")]


def every_turn_answered(discord: FakeDiscord, api: FakeAnthropic, words: Iterable[str]) -> bool:
    """Each word reached Claude, and each turn's echo is shown on Discord."""
    turns = [t.user_text for t in api.turns]
    texts = all_bot_texts(discord)
    return all(any(w in t for t in turns) for w in words) and all(
        any(echo(t) in text for text in texts) for t in turns
    )


def assert_each_answered_once(
    discord: FakeDiscord,
    api: FakeAnthropic,
    tmp_path: Path,
    mentions: dict[str, dict[str, Any]],
) -> None:
    """Each mention (by its unique word) was queued once, sent once, and its echo shown once."""
    turns = [t.user_text for t in api.turns]
    for word, message in mentions.items():
        assert sum(t.count(word) for t in turns) == 1, f"{word} reached Claude once"
        assert reactions_on(discord, message["id"]).count(QUEUED) == 1, f"{word} queued once"
    texts = all_bot_texts(discord)
    for turn in turns:
        assert sum(echo(turn) in text for text in texts) == 1, f"one answer to {turn!r}"
    # The batch's end is stored just after its last text is shown, so its state is not read.
    stored = stored_prompts(tmp_path)
    assert sorted(stored) == sorted(f"discord:{m['id']}" for m in mentions.values())


# -- the cases ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
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
        # Link previews of URLs Claude wrote are suppressed on everything posted in the thread.
        thread_posts = [
            c for c in posted if c.method == "POST" and f"/channels/{thread_b}/" in c.path
        ]
        assert thread_posts
        assert all(int(c.json.get("flags") or 0) & SUPPRESS_EMBEDS for c in thread_posts)
        assert sum("login test" in t.user_text for t in fake_api.turns) == 1, "one merged turn"
        # The other merged prompt gets 🔗 and a link to the thread where the answer streams.
        link = f"/channels/{GUILD_ID}/{thread_b}"
        await wait_for(
            fake_discord,
            lambda: any(link in m["content"] for m in fake_discord.messages(CHANNEL_ID)),
        )
        assert any(str(b["id"]) in c.path and "🔗" in c.path for c in fake_discord.calls)
    finally:
        await bot.stop()


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
            await wait_for(
                fake_discord,
                lambda: any(
                    "ECHO: from the terminal" in m["content"]
                    for m in fake_discord.messages(CHANNEL_ID)
                ),
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


@pytest.mark.timeout(120)
async def test_a_long_reply_with_code_blocks_is_split_with_balanced_fences(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    async with running_bot(tmp_path, fake_api, fake_discord) as bot:
        assert "Welcome" in await join(fake_discord, ALICE_ID, await party_token(bot))
        mention = await fake_discord.send_message(ALICE_ID, "LONG walk me through every step")
        thread = int(mention["id"])
        expected = squash(LONG_REPLY)

        await wait_for(fake_discord, lambda: squash(output_text(fake_discord, thread)) == expected)

        for message in bot_messages(fake_discord, thread):
            for text in message["content_history"]:
                assert fences_balanced(text), f"unbalanced fences in message {message['id']}"
        outputs = output_messages(fake_discord, thread)
        assert len(outputs) <= math.ceil(len(LONG_REPLY) / MAX_CHARS) + 1, [
            len(m["content"]) for m in outputs
        ]
        sent = content_calls(fake_discord)
        assert sent, "the reply was posted"
        assert all(len(c.json["content"]) <= MAX_CHARS for c in sent)
        assert [c.status for c in sent if c.status >= 400] == [], "Discord refused nothing"


@pytest.mark.timeout(120)
async def test_429s_on_create_and_edit_mid_stream_lose_nothing_and_keep_order(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    # A SLOW reply just over one message long: edited in place for seconds, then a second
    # message is created, so both routes are hit while the reply streams.
    steps = 1050
    async with (
        FakeAnthropic(slow_interval_s=0.01, slow_steps=steps) as api,
        running_bot(tmp_path, api, fake_discord) as bot,
    ):
        assert "Welcome" in await join(fake_discord, ALICE_ID, await party_token(bot))
        mention = await fake_discord.send_message(ALICE_ID, "SLOW stream past the rate limits")
        thread = int(mention["id"])
        await wait_for(fake_discord, lambda: output_messages(fake_discord, thread) != [])

        # Per route: each later 429 is retried after its retry_after; rules queue in order.
        retry_after_s = {POST: [0.3, 0.2], PATCH: [0.3, 0.3, 0.2]}
        fake_discord.rate_limit(POST, retry_after=0.3)
        fake_discord.rate_limit(POST, retry_after=0.2, is_global=True)
        fake_discord.rate_limit(PATCH, retry_after=0.3, count=2)
        fake_discord.rate_limit(PATCH, retry_after=0.2, is_global=True)
        injected = 5
        (turn,) = api.turns
        reply = echo(turn.user_text) + SLOW_DELTA * steps

        await wait_for(fake_discord, lambda: output_text(fake_discord, thread) == reply)

        assert len(output_messages(fake_discord, thread)) == math.ceil(len(reply) / MAX_CHARS)
        assert fake_discord.rate_limited_count == injected
        for route, waits in retry_after_s.items():
            calls = [c for c in fake_discord.calls if c.route == route]
            limited = [i for i, c in enumerate(calls) if c.status == 429]
            assert len(limited) == len(waits), route
            for i, wait_s in zip(limited, waits, strict=True):
                waited_s = calls[i + 1].arrived_at_s - calls[i].arrived_at_s
                assert waited_s >= wait_s - PACING_SLACK_S, f"{route} retried after {waited_s:.3f}s"
        for message in bot_messages(fake_discord, thread):
            assert all(len(text) <= MAX_CHARS for text in message["content_history"])


@pytest.mark.timeout(120)
async def test_a_gateway_drop_mid_burst_loses_nothing_and_queues_a_redelivery_once(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    async with running_bot(tmp_path, fake_api, fake_discord) as bot:
        token = await party_token(bot)
        assert "Welcome" in await join(fake_discord, ALICE_ID, token)
        assert "Welcome" in await join(fake_discord, BOB_ID, token)
        mentions: dict[str, dict[str, Any]] = {}

        async def mention(author: int, word: str) -> dict[str, Any]:
            mentions[word] = await fake_discord.send_message(author, f"describe {word} briefly")
            return mentions[word]

        await mention(ALICE_ID, "alpha")
        await mention(BOB_ID, "bravo")
        await fake_discord.drop_gateway(code=None)  # a TCP reset: no close frame
        # Sent while the client is away: the gateway logs them for the RESUME.
        charlie = await mention(ALICE_ID, "charlie")
        delta = await mention(BOB_ID, "delta")
        await asyncio.wait_for(fake_discord.next_gateway_frame(GatewayOp.RESUME), 30)
        replayed = {f["d"].get("id") for f in fake_discord.replayed if f["t"] == "MESSAGE_CREATE"}
        assert {charlie["id"], delta["id"]} <= replayed, "the RESUME replayed the gap"
        await wait_for(fake_discord, lambda: every_turn_answered(fake_discord, fake_api, mentions))

        # Discord is at-least-once: the same MESSAGE_CREATE (same seq) arrives twice.
        foxtrot = await mention(ALICE_ID, "foxtrot")
        frame = await fake_discord.redeliver_last_dispatch()
        assert (frame["t"], frame["d"]["id"]) == ("MESSAGE_CREATE", foxtrot["id"])
        await wait_for(fake_discord, lambda: every_turn_answered(fake_discord, fake_api, mentions))

        assert_each_answered_once(fake_discord, fake_api, tmp_path, mentions)


@pytest.mark.timeout(150)
async def test_an_invalidated_session_reidentifies_and_loses_no_prompt(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    async with running_bot(tmp_path, fake_api, fake_discord) as bot:
        assert "Welcome" in await join(fake_discord, ALICE_ID, await party_token(bot))
        mentions: dict[str, dict[str, Any]] = {}

        async def mention(word: str) -> dict[str, Any]:
            mentions[word] = await fake_discord.send_message(ALICE_ID, f"describe {word} briefly")
            return mentions[word]

        await mention("alpha")
        await wait_for(fake_discord, lambda: every_turn_answered(fake_discord, fake_api, mentions))
        old_session = fake_discord.session_id
        await mention("bravo")  # on the socket just before the op 9
        await fake_discord.invalidate_session()
        # discord.py waits a few seconds before it IDENTIFYs again.
        async with asyncio.timeout(60):
            while fake_discord.session_id == old_session:
                await fake_discord.gateway_received.get()
        charlie = await mention("charlie")
        frame = await fake_discord.redeliver_last_dispatch()
        assert (frame["t"], frame["d"]["id"]) == ("MESSAGE_CREATE", charlie["id"])

        await wait_for(fake_discord, lambda: every_turn_answered(fake_discord, fake_api, mentions))

        identifies = [f for f in fake_discord.gateway_frames if f.op == GatewayOp.IDENTIFY]
        assert len(identifies) == 2, "one fresh IDENTIFY after the invalidation"
        assert_each_answered_once(fake_discord, fake_api, tmp_path, mentions)


@pytest.mark.timeout(120)
async def test_a_non_member_gets_one_hint_and_mass_mentions_are_posted_inert(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    async with running_bot(tmp_path, fake_api, fake_discord) as bot:
        assert "Welcome" in await join(fake_discord, ALICE_ID, await party_token(bot))
        first = await fake_discord.send_message(BOB_ID, "please run the bravo job")
        second = await fake_discord.send_message(BOB_ID, "again: run the bravo job")
        shout = await fake_discord.send_message(
            ALICE_ID, "tell @everyone and @here that the build is green"
        )
        thread = int(shout["id"])

        await wait_for(fake_discord, lambda: "build is green" in output_text(fake_discord, thread))

        hints = [c for c in content_calls(fake_discord) if "not joined" in c.json["content"]]
        assert len(hints) == 1, "one hint for two mentions"
        (hint_channel,) = (int(c.path.split("/")[2]) for c in hints)
        dm = fake_discord.channel(hint_channel)
        assert (dm["type"], dm["recipients"][0]["id"]) == (DM_CHANNEL, str(BOB_ID)), "by DM"
        assert reactions_on(fake_discord, first["id"]) == []
        assert reactions_on(fake_discord, second["id"]) == []
        assert reactions_on(fake_discord, shout["id"]) == [QUEUED]
        assert [t for t in fake_api.turns if "bravo" in t.user_text] == [], "nothing queued"
        assert stored_prompts(tmp_path) == [f"discord:{shout['id']}"]

        (turn,) = fake_api.turns
        assert "@everyone" in turn.user_text, "Claude's output (the echo) has @everyone"
        shown = output_text(fake_discord, thread)
        assert f"@{ZWSP}everyone" in shown
        assert f"@{ZWSP}here" in shown
        for call in content_calls(fake_discord):
            assert call.json.get("allowed_mentions") == {"parse": []}, call.path
            assert re.search(r"@(everyone|here)", call.json["content"]) is None, call.path
        for message in bot_messages(fake_discord, thread):
            assert message["mention_everyone"] is False


@pytest.mark.timeout(150)
async def test_kill_9_mid_stream_reruns_the_batch_once_and_says_so(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    bot = bot_process(tmp_path, fake_api, fake_discord)
    await bot.start()
    try:
        assert "Welcome" in await join(fake_discord, ALICE_ID, await party_token(bot))
        mention = await fake_discord.send_message(ALICE_ID, "SLOW write the release notes")
        thread = int(mention["id"])
        # Mid-stream: the echo and some of the dots have reached the thread.
        await wait_for(fake_discord, lambda: "ECHO:" in output_text(fake_discord, thread))
        await wait_for(fake_discord, lambda: output_text(fake_discord, thread).count(".") >= 3)
        bot.kill()
        assert await asyncio.wait_for(bot.wait_exit(), 10) != 0
    finally:
        await bot.stop()

    async with running_bot(tmp_path, fake_api, fake_discord):

        def rerun_shown() -> bool:
            if len(fake_api.turns) < 2:
                return False
            answer = echo(fake_api.turns[-1].user_text) + SLOW_DELTA * 50
            return any(answer in m["content"] for m in bot_messages(fake_discord, thread))

        await wait_for(fake_discord, rerun_shown)

        turns = [t.user_text for t in fake_api.turns]
        assert len(turns) == 2, "the batch ran, then was re-run once"
        assert all("release notes" in t for t in turns)
        answer = echo(turns[-1]) + SLOW_DELTA * 50
        texts = [m["content"] for m in bot_messages(fake_discord, thread)]
        assert sum(answer in t for t in texts) == 1, "the completed answer is shown once"
        told = [t for t in all_bot_texts(fake_discord) if "re-run" in t or "restart" in t]
        assert told, "the thread says the batch was cut off and re-run"
        assert any("re-run" in t for t in texts if t.startswith("**Batch ")), texts
        assert stored_prompts(tmp_path) == [f"discord:{mention['id']}"]


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
async def test_attachments_are_read_into_the_prompt_or_named(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    pasted = "line one of the paste\nPASTED-MARKER-7f3 and the rest of it\n"
    async with running_bot(tmp_path, fake_api, fake_discord) as bot:
        assert "Welcome" in await join(fake_discord, ALICE_ID, await party_token(bot))
        await fake_discord.send_message(
            ALICE_ID,
            "summarise the attached",
            attachments=[
                ("message.txt", pasted.encode()),
                ("diagram.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256))),
            ],
        )
        turn = await asyncio.wait_for(fake_api.requests.get(), 30)

    assert "summarise the attached" in turn.user_text
    assert "PASTED-MARKER-7f3" in turn.user_text, "the text file was read into the prompt"
    assert "diagram.png" in turn.user_text, "the image is named"
    assert "\x89PNG" not in turn.user_text


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
