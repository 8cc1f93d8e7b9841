"""Approving Claude's tool use from Discord: a request with buttons, pinging only its requesters.

Two layers. First the adapter alone, in-process: the real discord.py client, `ThreadRelay` and
`DiscordSink` against the fake Discord, with a stand-in at the Party seam that records what
the adapter hands it. Then `concordia run` end to end: the real `claude` CLI (pointed at the
fake Anthropic API, whose ``TOOL_BASH <command>`` turns into a Bash tool call) asks permission
over its control channel, and people answer with the buttons, the slash command or from a
terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest

from adapters.discord import DiscordAdapter, DiscordSink
from bot.app import chat_outputs
from bot.config import DiscordSettings
from bot.model import (
    Accepted,
    ApprovalRequested,
    ApprovalResolved,
    Author,
    Batch,
    BatchStarted,
    Command,
    CommandResult,
    Decision,
    Listener,
    MergeGroup,
    PartyEvent,
    Prompt,
    Role,
    SourcePrompt,
)
from bot.ports import AdapterError
from bot.store import Store
from tests.e2e.drivers import discord_config, interaction_reply
from tests.e2e.harness import BotProcess, Client
from tests.e2e.test_discord_e2e import PARTY, bot_messages, join, party_token
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.discord_api import ALICE_ID, BOB_ID, CHANNEL_ID, GUILD_ID, TOKEN, FakeDiscord
from tests.waits import until

MAX_CHARS = 2000
EPHEMERAL = 1 << 6
POST = "POST /channels/{channel_id}/messages"
PATCH = "PATCH /channels/{channel_id}/messages/{message_id}"
# Button styles as Discord numbers them.
PRIMARY, SUCCESS, DANGER = 1, 3, 4
BUTTONS = [
    ("Allow once", SUCCESS, "allow"),
    ("Always allow", PRIMARY, "always"),
    ("Deny", DANGER, "deny"),
]
NO_PINGS: dict[str, list[int]] = {"parse": []}
FENCE_LINE = re.compile(r"^```[^\n]*$", re.MULTILINE)
HEAD = "🔐 **Approval "
DEADLINE_S = 10.0


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


# -- reading approvals off the fake ---------------------------------------------------------------


def approval_messages(discord_fake: FakeDiscord, channel_id: int) -> list[dict[str, Any]]:
    """The bot's approval requests in a channel or thread, oldest first."""
    return [m for m in bot_messages(discord_fake, channel_id) if m["content"].startswith(HEAD)]


def buttons(message: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(label, style, custom_id) of every button on a message, row by row."""
    return [
        (b["label"], b["style"], b["custom_id"])
        for row in message["components"]
        for b in row["components"]
    ]


def approval_id_of(message: dict[str, Any]) -> int:
    match = re.match(r"🔐 \*\*Approval (\d+)\*\*", message["content"])
    assert match, message["content"]
    return int(match.group(1))


def custom_id(approval_id: int, decision: str) -> str:
    return f"concordia:approval:{approval_id}:{decision}"


def assert_open_request(message: dict[str, Any], pinged: list[int]) -> None:
    """Three buttons, fences balanced, under the limit, and only ``pinged`` mentioned, once."""
    approval_id = approval_id_of(message)
    assert buttons(message) == [
        (label, style, custom_id(approval_id, decision)) for label, style, decision in BUTTONS
    ]
    content = message["content"]
    assert len(content) <= MAX_CHARS
    assert len(FENCE_LINE.findall(content)) % 2 == 0, content
    assert re.findall(r"<@!?(\d+)>", content) == [str(u) for u in pinged], content
    assert message["allowed_mentions_history"][0] == {"parse": [], "users": pinged}
    assert [int(u["id"]) for u in message["mentions"]] == pinged
    assert message["mention_everyone"] is False


def assert_closed(message: dict[str, Any], mark: str, outcome: str) -> None:
    """The request kept, its buttons gone, the outcome as its last line, pinging nobody."""
    content = message["content"]
    request = message["content_history"][0].rsplit("\n", 1)[0]
    assert content == f"{request}\n{mark} {outcome}", content
    assert message["components"] == []
    assert message["allowed_mentions_history"][-1] == NO_PINGS
    assert message["mentions"] == []


async def await_closed(discord_fake: FakeDiscord, channel_id: int) -> dict[str, Any]:
    """The thread's one approval request, once its buttons are gone."""

    def closed() -> bool:
        shown = approval_messages(discord_fake, channel_id)
        return bool(shown) and shown[0]["components"] == []

    await until(closed, discord_fake.requests, within_s=60)
    (message,) = approval_messages(discord_fake, channel_id)
    return message


async def await_request(discord_fake: FakeDiscord, channel_id: int) -> dict[str, Any]:
    """The thread's first approval request, once it is posted."""

    def posted() -> bool:
        try:
            return approval_messages(discord_fake, channel_id) != []
        except KeyError:
            return False  # the thread is not there yet

    await until(posted, discord_fake.requests, within_s=60)
    return approval_messages(discord_fake, channel_id)[0]


# -- the adapter alone, against the fake Discord -------------------------------------------------


@dataclass(eq=False)
class StandInParty:
    """The Party seam as the Discord adapter uses it. Roles are by Discord id; every prompt,
    decision and command is recorded, and each decision gets ``verdict`` back."""

    roles: dict[int, Role]
    name: str = "discord-stand-in"
    max_prompt_chars: int = 10_000
    verdict: CommandResult = field(
        default_factory=lambda: CommandResult("approve", True, "allowed approval 7")
    )
    listeners: list[Listener] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)
    decisions: asyncio.Queue[tuple[int, Author, Decision]] = field(default_factory=asyncio.Queue)
    commands: asyncio.Queue[Command] = field(default_factory=asyncio.Queue)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def publish(self, event: PartyEvent) -> None:
        for listener in self.listeners:
            listener.deliver(event)

    def chat_safe(self, text: str) -> str:
        return text

    def role_of(self, author: Author) -> Role | None:
        if author.platform != "discord":
            return None
        return self.roles.get(int(author.user_id))

    async def submit(self, prompt: Prompt) -> Accepted:
        self.prompts.append(prompt)
        return Accepted(len(self.prompts), 1)

    async def decide(self, approval_id: int, author: Author, decision: Decision) -> CommandResult:
        self.decisions.put_nowait((approval_id, author, decision))
        return self.verdict

    async def command(self, command: Command) -> CommandResult:
        self.commands.put_nowait(command)
        return CommandResult(command.name, True, f"{command.name} {command.args}: done")


@contextlib.contextmanager
def endpoints_restored() -> Iterator[None]:
    """The adapter points discord.py's class-level endpoints at the fake; put them back."""
    saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    try:
        yield
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


@contextlib.asynccontextmanager
async def serving(
    fake: FakeDiscord, party: StandInParty, tmp_path: Path
) -> AsyncIterator[DiscordAdapter]:
    """A started `DiscordAdapter` serving `CHANNEL_ID` for ``party``; stopped on exit."""
    settings = DiscordSettings(
        channels=(str(CHANNEL_ID),),
        api_base=fake.api_base,
        gateway_url=fake.gateway_url,
        edit_interval_s=0.05,
    )
    with endpoints_restored():
        async with Store(tmp_path / "concordia.db") as store:
            adapter = DiscordAdapter(
                settings,
                {str(CHANNEL_ID): party},  # type: ignore[dict-item]  # the seam, stood in for
                token=TOKEN,
                clean=party.chat_safe,
            )
            await adapter.start()
            try:
                # The relay between the party and Discord, as `concordia run` wires it.
                async with chat_outputs(adapter, {party.name: party}, store):  # type: ignore[dict-item]
                    yield adapter
            finally:
                await adapter.stop()


@pytest.fixture
def quick_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """discord.py waits this long for more GUILD_CREATEs; the fake sends its one at once."""
    monkeypatch.setattr(DiscordAdapter, "guild_ready_timeout_s", 0.05)


def requested(
    approval_id: int, *requesters: Author, needed: int = 1, detail: str = "touch approved.txt"
) -> ApprovalRequested:
    return ApprovalRequested(
        approval_id=approval_id,
        batch_id=1,
        tool="Bash",
        summary="run `touch approved.txt`",
        detail=detail,
        needed=needed,
        requesters=requesters,
        timeout_s=90.0,
    )


def discord_author(user_id: int, name: str) -> Author:
    return Author("discord", str(user_id), name)


async def start_batch(fake: FakeDiscord, party: StandInParty, *authors: Author) -> int:
    """Alice's mention starts batch 1 (its sources: ``authors``); returns its thread's id."""
    mention = await fake.send_message(ALICE_ID, "TOOL_BASH touch approved.txt")
    thread = f"{CHANNEL_ID}/{mention['id']}"
    sources = tuple(
        SourcePrompt(n, a.name, "touch it", thread=thread, platform=a.platform, user_id=a.user_id)
        for n, a in enumerate(authors, start=1)
    )
    group = MergeGroup(tuple(s.prompt_id for s in sources), tuple(a.name for a in authors), "x")
    party.publish(BatchStarted(Batch(1, "touch it", sources, (group,))))
    return int(mention["id"])


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("quick_ready")
async def test_a_request_shows_three_buttons_and_pings_each_discord_requester_once(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    party = StandInParty({ALICE_ID: Role.PROMPTER, BOB_ID: Role.PROMPTER})
    alice, bob = discord_author(ALICE_ID, "Alice"), discord_author(BOB_ID, "Bob")
    carol = Author("websocket", "carol", "carol")
    # Backtick runs that would close the fence early, and far more than one message holds.
    detail = "printf '```' > notes.md\n" + "echo ````done````\n" * 400
    async with serving(fake_discord, party, tmp_path):
        thread = await start_batch(fake_discord, party, alice, bob, carol)
        party.publish(requested(7, alice, carol, bob, alice, needed=2, detail=detail))

        message = await await_request(fake_discord, thread)

    assert_open_request(message, pinged=[ALICE_ID, BOB_ID])
    content = message["content"]
    assert content.startswith("🔐 **Approval 7**: Claude wants to run `touch approved.txt`\n```\n")
    assert "printf '`" in content, "the detail is shown"
    assert content.count("```") == 2, "no backtick run in the detail closes the fence"
    assert "needs 2 approvers" in content
    assert "no answer in 90 s denies it" in content
    post = next(c for c in fake_discord.calls if c.route == POST and c.json.get("components"))
    assert int(post.json["flags"]) & (1 << 2), "embeds suppressed"


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("quick_ready")
async def test_a_click_goes_to_the_party_and_its_answer_only_to_the_clicker(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    party = StandInParty({ALICE_ID: Role.PROMPTER, BOB_ID: Role.APPROVER})
    alice = discord_author(ALICE_ID, "Alice")
    async with serving(fake_discord, party, tmp_path):
        thread = await start_batch(fake_discord, party, alice)
        party.publish(requested(7, alice))
        message = await await_request(fake_discord, thread)

        click = await fake_discord.click_button(BOB_ID, int(message["id"]), custom_id(7, "always"))
        decided = await asyncio.wait_for(party.decisions.get(), DEADLINE_S)
        reply = await interaction_reply(fake_discord, click)

        party.publish(ApprovalResolved(7, 1, True, "allowed by Bob; Bash(touch approved.txt) …"))
        closed = await await_closed(fake_discord, thread)

    assert decided == (7, discord_author(BOB_ID, "Bob"), Decision.ALWAYS)
    assert reply["content"] == "allowed approval 7"
    assert reply["flags"] & EPHEMERAL
    callback = next(c for c in fake_discord.calls if click["token"] in c.path)
    assert callback.json["type"] == 5, "deferred at once: Discord wants an answer within 3 s"
    assert_closed(closed, "✅", "allowed by Bob; Bash(touch approved.txt) …")
    assert "<@" not in closed["content"]


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("quick_ready")
async def test_a_refusal_is_shown_to_the_clicker_and_a_stranger_is_told_to_join(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    refusal = "you joined as a prompter: only approvers and the host decide on tool use"
    party = StandInParty(
        {ALICE_ID: Role.PROMPTER}, verdict=CommandResult("approve", False, refusal)
    )
    alice = discord_author(ALICE_ID, "Alice")
    async with serving(fake_discord, party, tmp_path):
        thread = await start_batch(fake_discord, party, alice)
        party.publish(requested(8, alice))
        message = await await_request(fake_discord, thread)

        mine = await fake_discord.click_button(ALICE_ID, int(message["id"]), custom_id(8, "allow"))
        refused = await interaction_reply(fake_discord, mine)
        strangers = await fake_discord.click_button(
            BOB_ID, int(message["id"]), custom_id(8, "deny")
        )
        hint = await interaction_reply(fake_discord, strangers)

    assert refused["content"] == refusal
    assert refused["flags"] & EPHEMERAL
    assert hint["flags"] & EPHEMERAL
    assert "/concordia join" in hint["content"]
    assert party.decisions.qsize() == 1, "only the member's click reached the party"
    (shown,) = approval_messages(fake_discord, thread)
    assert len(shown["content_history"]) == 1
    assert len(buttons(shown)) == 3, "the request stays open"


@pytest.mark.timeout(45)
@pytest.mark.usefixtures("quick_ready")
async def test_buttons_posted_before_a_restart_still_answer(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    before = StandInParty({ALICE_ID: Role.PROMPTER})
    alice = discord_author(ALICE_ID, "Alice")
    async with serving(fake_discord, before, tmp_path):
        thread = await start_batch(fake_discord, before, alice)
        before.publish(requested(9, alice))
        message = await await_request(fake_discord, thread)

    after = StandInParty({BOB_ID: Role.HOST})
    async with serving(fake_discord, after, tmp_path):
        click = await fake_discord.click_button(BOB_ID, int(message["id"]), custom_id(9, "deny"))
        decided = await asyncio.wait_for(after.decisions.get(), DEADLINE_S)
        await interaction_reply(fake_discord, click)

    assert decided == (9, discord_author(BOB_ID, "Bob"), Decision.DENY)
    assert before.decisions.empty()


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("quick_ready")
async def test_approve_and_approvals_subcommands_become_commands(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    party = StandInParty({BOB_ID: Role.HOST})
    async with serving(fake_discord, party, tmp_path):
        answers = []
        asked: list[tuple[str, dict[str, str | int | float | bool]]] = [
            ("approve", {"approval_id": 12, "decision": "deny"}),
            ("approvals", {"reset": True}),
            ("approvals", {}),
        ]
        for subcommand, options in asked:
            interaction = await fake_discord.send_interaction(
                BOB_ID, "concordia", subcommand, options
            )
            answers.append(await interaction_reply(fake_discord, interaction))
        commands = [party.commands.get_nowait() for _ in range(party.commands.qsize())]

    bob = discord_author(BOB_ID, "Bob")
    assert commands == [
        Command("approve", "12 deny", bob, str(CHANNEL_ID)),
        Command("approvals", "reset", bob, str(CHANNEL_ID)),
        Command("approvals", "", bob, str(CHANNEL_ID)),
    ]
    assert [a["content"] for a in answers] == [
        "approve 12 deny: done",
        "approvals reset: done",
        "approvals : done",
    ]
    assert all(a["flags"] & EPHEMERAL for a in answers)
    # Discord only offers the three decisions, so nothing else can be sent.
    (registered,) = fake_discord.commands(GUILD_ID)
    approve = next(o for o in registered["options"] if o["name"] == "approve")
    decision = next(o for o in approve["options"] if o["name"] == "decision")
    assert [c["value"] for c in decision["choices"]] == ["allow", "always", "deny"]


@pytest.mark.timeout(30)
async def test_the_sink_turns_discord_refusals_into_adapter_errors(
    fake_discord: FakeDiscord,
) -> None:
    client = discord.Client(intents=discord.Intents.none())
    with endpoints_restored():
        discord.http.Route.BASE = fake_discord.api_base
        async with client:
            await client.login(TOKEN)
            sink = DiscordSink(client, 0.05, str)
            fake_discord.rate_limit(POST, retry_after=0.1)
            ref = await sink.post_approval(str(CHANNEL_ID), requested(3))
            with pytest.raises(AdapterError) as missing:
                await sink.post_approval("42", requested(4))
            resolved = ApprovalResolved(3, 1, False, "no decision in 90 s: denied")
            await sink.close_approval(ref, requested(3), resolved)
            with pytest.raises(AdapterError) as unknown:
                await sink.close_approval(f"{CHANNEL_ID}:42", requested(3), resolved)

    assert [c.status for c in fake_discord.calls if c.route == POST][:2] == [429, 200]
    assert (missing.value.retryable, unknown.value.retryable) == (False, False)
    assert "404" in str(missing.value)
    (message,) = approval_messages(fake_discord, CHANNEL_ID)
    assert_closed(message, "⛔", "no decision in 90 s: denied")
    assert message["allowed_mentions_history"][0] == {"parse": [], "users": []}


# -- `concordia run` end to end ------------------------------------------------------------------


async def host_token(bot: BotProcess) -> str:
    """The Discord party's host token (the host may decide on tool use, as approvers do)."""
    line = await bot.line_starting(f"party '{PARTY}'")
    match = re.search(r"\(host: (\S+)\)", line)
    assert match, line
    return match.group(1)


def thread_output(fake: FakeDiscord, thread: int) -> str:
    return "".join(m["content"] for m in bot_messages(fake, thread))


async def start_with_members(
    bot: BotProcess, fake: FakeDiscord, *, prompter: int, approver: int | None
) -> None:
    assert "Welcome" in await join(fake, prompter, await party_token(bot))
    if approver is not None:
        assert "Welcome" in await join(fake, approver, await host_token(bot))


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_allow_once_runs_the_tool_and_closes_the_request(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    config = discord_config(tmp_path, fake_api, fake_discord)
    async with BotProcess(config, tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}) as bot:
        await start_with_members(bot, fake_discord, prompter=ALICE_ID, approver=BOB_ID)
        mention = await fake_discord.send_message(ALICE_ID, "TOOL_BASH touch approved.txt")
        thread = int(mention["id"])

        request = await await_request(fake_discord, thread)
        assert not (tmp_path / "work" / "approved.txt").exists(), "it waits for a decision"
        approval_id = approval_id_of(request)
        click = await fake_discord.click_button(
            BOB_ID, int(request["id"]), custom_id(approval_id, "allow")
        )
        answer = await interaction_reply(fake_discord, click)
        closed = await await_closed(fake_discord, thread)
        await until(
            lambda: "TOOL RESULT" in thread_output(fake_discord, thread),
            fake_discord.requests,
            within_s=60,
            what="the tool's result shown",
        )

    assert_open_request(request, pinged=[ALICE_ID])
    assert "Claude wants to run `touch approved.txt`" in request["content"]
    assert "\n```\ntouch approved.txt\n```\n" in request["content"]
    assert answer["flags"] & EPHEMERAL
    assert "allowed" in answer["content"]
    assert_closed(closed, "✅", "allowed by Bob")
    assert (tmp_path / "work" / "approved.txt").exists()


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_deny_keeps_the_tool_from_running(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    config = discord_config(tmp_path, fake_api, fake_discord)
    async with BotProcess(config, tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}) as bot:
        await start_with_members(bot, fake_discord, prompter=ALICE_ID, approver=BOB_ID)
        mention = await fake_discord.send_message(ALICE_ID, "TOOL_BASH touch denied.txt")
        thread = int(mention["id"])

        request = await await_request(fake_discord, thread)
        click = await fake_discord.click_button(
            BOB_ID, int(request["id"]), custom_id(approval_id_of(request), "deny")
        )
        answer = await interaction_reply(fake_discord, click)
        closed = await await_closed(fake_discord, thread)
        await until(
            lambda: "TOOL ERROR" in thread_output(fake_discord, thread),
            fake_discord.requests,
            within_s=60,
            what="the tool's error shown",
        )

    assert answer["flags"] & EPHEMERAL
    assert "denied" in answer["content"]
    assert_closed(closed, "⛔", "denied by Bob")
    assert not (tmp_path / "work" / "denied.txt").exists()


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_a_prompters_click_changes_nothing_and_the_slash_command_decides(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    config = discord_config(tmp_path, fake_api, fake_discord)
    async with BotProcess(config, tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}) as bot:
        await start_with_members(bot, fake_discord, prompter=ALICE_ID, approver=None)
        mention = await fake_discord.send_message(ALICE_ID, "TOOL_BASH touch refused.txt")
        thread = int(mention["id"])
        request = await await_request(fake_discord, thread)
        approval_id = approval_id_of(request)

        mine = await fake_discord.click_button(
            ALICE_ID, int(request["id"]), custom_id(approval_id, "allow")
        )
        refused = await interaction_reply(fake_discord, mine)
        strangers = await fake_discord.click_button(
            BOB_ID, int(request["id"]), custom_id(approval_id, "allow")
        )
        hint = await interaction_reply(fake_discord, strangers)
        (unchanged,) = approval_messages(fake_discord, thread)
        # Had either click counted, the request would be closed and this would be refused.
        assert "Welcome" in await join(fake_discord, BOB_ID, await host_token(bot))
        slash = await fake_discord.send_interaction(
            BOB_ID,
            "concordia",
            "approve",
            {"approval_id": approval_id, "decision": "deny"},
            channel_id=thread,
        )
        decided = await interaction_reply(fake_discord, slash)
        closed = await await_closed(fake_discord, thread)
        await until(
            lambda: "TOOL ERROR" in thread_output(fake_discord, thread),
            fake_discord.requests,
            within_s=60,
            what="the tool's error shown",
        )

    assert refused["flags"] & EPHEMERAL
    assert "prompter" in refused["content"], refused["content"]
    assert hint["flags"] & EPHEMERAL
    assert "/concordia join" in hint["content"]
    assert unchanged["content_history"] == request["content_history"]
    assert len(buttons(unchanged)) == 3
    assert decided["flags"] & EPHEMERAL
    assert "denied" in decided["content"], decided["content"]
    assert_closed(closed, "⛔", "denied by Bob")
    assert not (tmp_path / "work" / "refused.txt").exists()


@pytest.mark.claude
@pytest.mark.timeout(120)
async def test_a_terminal_answers_a_request_made_from_discord_in_a_shared_party(
    fake_api: FakeAnthropic, fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    config = discord_config(tmp_path, fake_api, fake_discord, parties={str(CHANNEL_ID): "default"})
    async with BotProcess(config, tmp_path, env={"DISCORD_BOT_TOKEN": TOKEN}) as bot:
        assert "Welcome" in await join(fake_discord, ALICE_ID, bot.invite)
        async with Client(bot.port, bot.host_token, "carol") as carol:
            await carol.expect("welcome")
            mention = await fake_discord.send_message(ALICE_ID, "TOOL_BASH touch shared.txt")
            thread = int(mention["id"])

            frame = await carol.expect("approval", within_s=60)
            request = await await_request(fake_discord, thread)
            await carol.send(
                {"type": "approve", "approval_id": frame["approval_id"], "decision": "allow"}
            )
            result = await carol.expect("command_result")
            closed = await await_closed(fake_discord, thread)
            await until(
                lambda: "TOOL RESULT" in thread_output(fake_discord, thread),
                fake_discord.requests,
                within_s=60,
                what="the tool's result shown",
            )

    assert frame["tool"] == "Bash"
    assert "touch shared.txt" in frame["input"]
    assert approval_id_of(request) == frame["approval_id"]
    assert_open_request(request, pinged=[ALICE_ID])
    assert result["ok"] is True, result
    assert_closed(closed, "✅", "allowed by carol")
    assert (tmp_path / "work" / "shared.txt").exists()
