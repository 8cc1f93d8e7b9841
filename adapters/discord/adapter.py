"""The Discord bridge: mentions in served channels become prompts; answers stream into threads.

Only this package imports discord.py. It translates: a mention becomes a `Prompt`, a
`/concordia …` application command becomes a `Command`, a click on an approval's button a
`Party.decide`, on a question's button a `Party.answer`; each party's events reach Discord
through the relay the composition root puts in front of `DiscordSink`
(adapters/discord/sink.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import PurePosixPath
from typing import Any, Literal, assert_never

import discord
import discord.gateway
import discord.http
import yarl
from discord import app_commands

from adapters.attachments import Attachment, Reader, submit_with
from adapters.discord.sink import (
    MAX_MESSAGE_CHARS,
    PLATFORM,
    ApprovalButton,
    DiscordSink,
    QuestionButton,
    author_of,
    strip_mention,
)
from bot.config import DiscordSettings
from bot.lifecycle import first_of
from bot.model import (
    Accepted,
    Author,
    Batch,
    BatchStarted,
    Command,
    CommandResult,
    Decision,
    PartyEvent,
    Prompt,
    Rejected,
    RejectKind,
)
from bot.party import Party
from bot.ports import AdapterError, ChatOutput
from bot.render import Markup
from bot.split import split_message

__all__ = ["DiscordAdapter", "diagnose"]

log = logging.getLogger(__name__)

# Close codes after which reconnecting only burns the daily IDENTIFY budget.
_FATAL_CLOSE_CODES = frozenset({4004, 4010, 4011, 4012, 4013, 4014})
# "Authentication failed": the gateway's way of refusing the token (REST's is a 401).
_BAD_TOKEN_CLOSE_CODE = 4004
_QUEUED = "⏳"
_MERGED = "🔗"
_TEXT_SUFFIXES = frozenset(
    {".txt", ".md", ".py", ".js", ".ts", ".json", ".yaml", ".yml", ".toml", ".log", ".diff",
     ".patch", ".sh", ".rs", ".go", ".java", ".c", ".h", ".cpp", ".rb", ".sql", ".csv", ".ini"}
)  # fmt: skip
_HOW_TO_JOIN = "Ask the host for the invite token and run `/concordia join token:<token>`."
_MEMBER_HINT = f"You have not joined this party yet, so your mention was not queued. {_HOW_TO_JOIN}"
_COMMAND_HINT = f"You have not joined this party yet. {_HOW_TO_JOIN}"
_NOT_SERVED = "This channel is not served by Concordia."


def _attachments(attachments: list[discord.Attachment]) -> tuple[list[Attachment], Reader]:
    """A message's files as `adapters.attachments` sees them, and their reader. Text files
    (Discord turns a long paste into message.txt) are read in; others are named."""
    by_id = {str(a.id): a for a in attachments}
    described = [
        Attachment(
            a.filename,
            a.size,
            a.content_type or "",
            (a.content_type or "").startswith("text/")
            or PurePosixPath(a.filename).suffix.lower() in _TEXT_SUFFIXES,
            str(a.id),
        )
        for a in attachments
    ]

    async def read(attachment: Attachment) -> bytes | None:
        try:
            return await by_id[attachment.ref].read()
        except discord.HTTPException:
            log.warning("could not read the attachment %s", attachment.name, exc_info=True)
            return None

    return described, read


class _MergeNotes:
    """On each batch, every Discord source but the first gets a reaction and a link to the
    thread where the merged answer streams. Owns its queue and task."""

    def __init__(self, client: discord.Client, guild_of: Mapping[int, int]):
        self._client = client
        self._guild_of = guild_of
        self._queue: asyncio.Queue[Batch] = asyncio.Queue()

    def deliver(self, event: PartyEvent) -> None:
        if isinstance(event, BatchStarted):
            self._queue.put_nowait(event.batch)

    async def run(self) -> None:
        while True:
            batch = await self._queue.get()
            ours = [s for s in batch.sources if s.platform == PLATFORM and "/" in s.thread]
            if len(ours) < 2:
                continue
            home = ours[0].thread
            channel_id, thread_id = (int(part) for part in home.split("/"))
            link = f"https://discord.com/channels/{self._guild_of.get(channel_id, 0)}/{thread_id}"
            for source in ours[1:]:
                if source.thread == home:
                    continue
                cid, mid = (int(part) for part in source.thread.split("/"))
                message = self._client.get_partial_messageable(cid).get_partial_message(mid)
                try:
                    await message.add_reaction(_MERGED)
                    await message.reply(
                        f"Merged into batch {batch.batch_id}: {link}",
                        allowed_mentions=discord.AllowedMentions.none(),
                        suppress_embeds=True,
                    )
                except discord.HTTPException:
                    log.warning("could not link a merged prompt", exc_info=True)


class _Client(discord.Client):
    """discord.py's client with our command tree; events go to the adapter."""

    def __init__(self, adapter: DiscordAdapter):
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=adapter.guild_ready_timeout_s,
        )
        self.adapter = adapter
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(_concordia_group(adapter))

    async def setup_hook(self) -> None:
        # Approval and question buttons are routed by custom_id alone, so those posted
        # before a restart still answer.
        self.add_dynamic_items(ApprovalButton, QuestionButton)
        await self.adapter.setup(self)

    async def on_ready(self) -> None:
        self.adapter.ready.set()

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)


class DiscordAdapter:
    """Serves ``channels`` (channel id → its party). `start` returns once READY."""

    name = PLATFORM
    # discord.py waits this long for GUILD_CREATEs before READY; the guilds we need are
    # fetched by id in setup anyway.
    guild_ready_timeout_s = 2.0

    def __init__(
        self,
        settings: DiscordSettings,
        channels: Mapping[str, Party],
        *,
        token: str,
        clean: Callable[[str], str],
    ):
        """``clean`` makes a participant's text fit to post (the run's `chat_safe`)."""
        self._settings = settings
        self._channels = {int(c): p for c, p in channels.items()}
        self._token = token
        self._clean = clean
        self.ready = asyncio.Event()
        self._client: _Client | None = None
        self._runner: asyncio.Task[None] | None = None
        self._notes: list[_MergeNotes] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._guild_of: dict[int, int] = {}
        self._hinted: set[int] = set()
        self._sink: DiscordSink | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        # Class attributes shared by every client in the process: the endpoints are settings.
        discord.http.Route.BASE = self._settings.api_base.rstrip("/")
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self._settings.gateway_url)
        self._client = _Client(self)
        self._runner = asyncio.create_task(self._connect(self._client), name="discord-client")
        ready = asyncio.create_task(self.ready.wait())
        try:
            async with asyncio.timeout(self._settings.ready_timeout_s):
                await asyncio.wait({ready, self._runner}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise AdapterError(
                f"Discord did not become ready within discord.ready_timeout_s "
                f"({self._settings.ready_timeout_s:g} s)",
                retryable=False,
            ) from None
        finally:
            ready.cancel()
        if self._runner.done():
            self._runner.result()  # raises the AdapterError that ended it
        self._sink = DiscordSink(self._client, self._settings.edit_interval_s, self._clean)
        for party in {p.name: p for p in self._channels.values()}.values():
            notes = _MergeNotes(self._client, self._guild_of)
            self._notes.append(notes)
            self._unsubscribe.append(party.subscribe(notes))

    def outputs(self) -> list[ChatOutput]:
        """Each party's events go to the first of its channels that is served here."""
        if self._sink is None:
            raise RuntimeError("start() the Discord adapter before outputs()")
        homes: dict[str, str] = {}
        for channel_id, party in self._channels.items():
            homes.setdefault(party.name, str(channel_id))
        return [
            ChatOutput(name, self._sink, PLATFORM, Markup.MARKDOWN, home)
            for name, home in homes.items()
        ]

    async def run(self) -> None:
        """Serve until cancelled; raises `AdapterError` if the gateway refuses us for good.

        The merge notes' owner tasks run in here, so one that dies ends the adapter."""
        if self._runner is None:
            raise RuntimeError("start() the Discord adapter before run()")
        try:
            async with asyncio.TaskGroup() as group:
                notes = [group.create_task(n.run(), name="discord-notes") for n in self._notes]
                try:
                    await asyncio.shield(self._runner)
                finally:
                    for task in notes:
                        task.cancel()
        except BaseExceptionGroup as failed:
            refused = first_of(failed, AdapterError)  # one line for the host: a refused token
            if refused is None:
                raise
            raise refused from None

    async def is_connected(self) -> bool:
        """The gateway is up and the client has its READY (for readiness)."""
        client = self._client
        return client is not None and client.is_ready() and not client.is_closed()

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError, AdapterError):
                await self._runner
            self._runner = None

    async def _connect(self, client: _Client) -> None:
        try:
            async with client:
                await client.start(self._token)
        except discord.LoginFailure:
            raise self._token_refused() from None
        except discord.PrivilegedIntentsRequired:
            raise AdapterError(
                "Discord refused the Message Content intent: enable it in the Developer Portal "
                "(Bot → Privileged Gateway Intents → Message Content Intent)",
                retryable=False,
            ) from None
        except discord.ConnectionClosed as exc:
            if exc.code == _BAD_TOKEN_CLOSE_CODE:
                raise self._token_refused() from None
            if exc.code in _FATAL_CLOSE_CODES:
                raise AdapterError(
                    f"Discord closed the gateway with {exc.code} ({exc.reason}); "
                    "not reconnecting (it would burn the IDENTIFY budget)",
                    retryable=False,
                ) from None
            raise AdapterError(f"Discord gateway closed: {exc.code} {exc.reason}") from exc

    def _token_refused(self) -> AdapterError:
        return AdapterError(
            f"Discord refused the bot token in ${self._settings.token_env}: "
            "reset it in the Developer Portal (Bot → Reset Token) and export it again",
            retryable=False,
        )

    async def setup(self, client: _Client) -> None:
        """Inside discord.py's loop after login: learn the served channels' guilds and
        register /concordia there, so the commands appear at once (global ones take up to
        an hour)."""
        guilds: set[int] = set()
        for channel_id in self._channels:
            try:
                channel = await client.fetch_channel(channel_id)
            except discord.HTTPException as exc:
                raise AdapterError(
                    f"discord.channels: cannot see channel {channel_id} ({exc.status}): invite the "
                    "bot to its server and give it View Channel",
                    retryable=False,
                ) from exc
            guild = getattr(channel, "guild", None)
            if guild is not None:
                self._guild_of[channel_id] = guild.id
                guilds.add(guild.id)
        for guild_id in guilds:
            target = discord.Object(id=guild_id)
            client.tree.copy_global_to(guild=target)
            await client.tree.sync(guild=target)

    # -- inbound -------------------------------------------------------------------------

    def party_for(self, channel_id: int | None, parent_id: int | None = None) -> Party | None:
        if channel_id in self._channels:
            return self._channels[channel_id]
        return self._channels.get(parent_id) if parent_id is not None else None

    async def on_message(self, message: discord.Message) -> None:
        client = self._client
        if client is None or client.user is None:
            return
        if message.author.bot or message.author.id == client.user.id:
            return  # our own posts come back as MESSAGE_CREATE; other bots are not members
        party = self._channels.get(message.channel.id)
        if party is None or client.user not in message.mentions:
            return
        prompt = Prompt(
            f"{PLATFORM}:{message.id}",
            author_of(message.author),
            strip_mention(message.content, client.user.id),
            thread=f"{message.channel.id}/{message.id}",
        )
        attachments, read = _attachments(message.attachments)
        submitted = await submit_with(party, prompt, attachments, read)
        submission = submitted.submission
        try:
            match submission:
                case Accepted(is_duplicate=False):
                    await message.add_reaction(_QUEUED)
                    if submitted.left_out:
                        await self._tell_left_out(message, submitted.left_out)
                case Accepted():
                    pass  # a redelivered event: already queued and marked
                case Rejected(kind=RejectKind.NOT_MEMBER, reason=reason):
                    await self._hint_once(message)
                    log.info("ignored a mention from a non-member: %s", reason)
                case Rejected(reason=reason):
                    await message.reply(
                        f"Not queued: {reason}", allowed_mentions=discord.AllowedMentions.none()
                    )
                case _:
                    assert_never(submission)
        except discord.HTTPException:
            log.warning("could not acknowledge a prompt on Discord", exc_info=True)

    async def _tell_left_out(self, message: discord.Message, left_out: tuple[str, ...]) -> None:
        """Tell the sender which of their files Claude does not get and why: a reply to their
        message, which pings nobody (as every other answer to a mention)."""
        lines = "\n".join(f"- {self._clean(' '.join(reason.split()))}" for reason in left_out)
        text = f"Queued without some of your files:\n{lines}"
        await message.reply(
            text[:MAX_MESSAGE_CHARS],
            allowed_mentions=discord.AllowedMentions.none(),  # a reply they see; no ping
            suppress_embeds=True,
        )

    async def _hint_once(self, message: discord.Message) -> None:
        """One hint per person, by DM, else as a reply (which cannot ping)."""
        if message.author.id in self._hinted:
            return
        self._hinted.add(message.author.id)
        try:
            await message.author.send(_MEMBER_HINT)
        except discord.HTTPException:
            await message.reply(_MEMBER_HINT, allowed_mentions=discord.AllowedMentions.none())

    async def command(
        self, interaction: discord.Interaction[Any], name: str, args: str = ""
    ) -> None:
        """Answer a /concordia subcommand: deferred at once (Discord wants a reply within
        3 s), then the party's answer, visible only to the caller unless it is public."""
        # The first follow-up replaces the "thinking" message and keeps its visibility:
        # a shell command's output is for the channel, every other answer for the caller.
        await interaction.response.defer(ephemeral=name != "shell", thinking=True)
        party = self._party_of(interaction)
        if party is None:
            await interaction.followup.send(_NOT_SERVED, ephemeral=True)
            return
        author = author_of(interaction.user)
        public = False
        if name == "join":
            text = (await party.admit(args, author)).text
        elif party.role_of(author) is None:
            text = _COMMAND_HINT  # the party's own answer does not say how to join here
        else:
            result = await party.command(Command(name, args, author, str(interaction.channel_id)))
            text, public = result.text, result.public
        # A public answer (a shell command's output) may be long: one message per part.
        parts = split_message(text, MAX_MESSAGE_CHARS) if public else [text[:MAX_MESSAGE_CHARS]]
        for part in parts:
            await interaction.followup.send(
                part,
                ephemeral=not public,
                allowed_mentions=discord.AllowedMentions.none(),
                suppress_embeds=True,
            )

    async def decide(
        self, interaction: discord.Interaction[Any], approval_id: int, decision: Decision
    ) -> None:
        """Answer a click on an approval's button: the party's verdict on it, shown only to
        the clicker. The party refuses what is not theirs to decide (a prompter's click, an
        approval no longer waiting) and says why; the buttons go only when the relay closes
        the request."""

        async def decided(party: Party, author: Author) -> CommandResult:
            return await party.decide(approval_id, author, decision)

        await self._click(interaction, f"approval {approval_id} with {decision.value}", decided)

    async def answer(
        self, interaction: discord.Interaction[Any], question_id: int, option: int
    ) -> None:
        """Answer a click on a question's button (a plan's Approve or Reject): option
        ``option`` given as the clicker's answer, and the party's reply shown only to them.
        The party refuses who may not answer (a prompter not in the batch, a prompter on a
        plan) or a question no longer waiting, and says why; the buttons go only when the
        relay closes the question."""

        async def answered(party: Party, author: Author) -> CommandResult:
            return await party.answer(question_id, author, str(option))

        await self._click(interaction, f"question {question_id} with {option}", answered)

    async def _click(
        self,
        interaction: discord.Interaction[Any],
        what: str,
        act: Callable[[Party, Author], Awaitable[CommandResult]],
    ) -> None:
        """A button click: deferred at once (Discord wants an answer within 3 s), then
        ``act`` for a member (a stranger is told how to join), answered only to the clicker."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        party = self._party_of(interaction)
        author = author_of(interaction.user)
        if party is None:
            text = _NOT_SERVED
        elif party.role_of(author) is None:
            text = _COMMAND_HINT
        else:
            result = await act(party, author)
            text = result.text
            log.info(
                "%s answered %s: %s",
                author.name,
                what,
                "taken" if result.ok else "refused",
                extra={"party": party.name, "platform": PLATFORM},
            )
        await interaction.followup.send(
            text[:MAX_MESSAGE_CHARS],
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
            suppress_embeds=True,
        )

    def _party_of(self, interaction: discord.Interaction[Any]) -> Party | None:
        """The party of the channel an interaction came from, or of its thread's parent."""
        parent = getattr(interaction.channel, "parent_id", None)
        return self.party_for(interaction.channel_id, parent)


def _concordia_group(adapter: DiscordAdapter) -> app_commands.Group:
    """/concordia join|leave|status|queue|cancel|shell|invite|restart|new|approve|answer|
    approvals."""
    group = app_commands.Group(name="concordia", description="Drive the shared Claude session")

    def simple(name: str, description: str) -> None:
        async def callback(interaction: discord.Interaction[Any]) -> None:
            await adapter.command(interaction, name)

        group.add_command(
            app_commands.Command(name=name, description=description, callback=callback)
        )

    @group.command(name="join", description="Join this channel's party with an invite token")
    @app_commands.describe(token="the invite token the host gave you")
    async def join(interaction: discord.Interaction[Any], token: str) -> None:
        await adapter.command(interaction, "join", token)

    @group.command(name="cancel", description="Interrupt the running turn (or withdraw yours)")
    @app_commands.describe(mine="withdraw your newest queued prompt instead")
    async def cancel(interaction: discord.Interaction[Any], mine: bool = False) -> None:
        await adapter.command(interaction, "cancel", "mine" if mine else "")

    @group.command(name="invite", description="Host: show or rotate the invite token")
    @app_commands.describe(rotate="replace the token; the old one stops working")
    async def invite(interaction: discord.Interaction[Any], rotate: bool = False) -> None:
        await adapter.command(interaction, "invite", "rotate" if rotate else "")

    @group.command(name="shell", description="Run a command on the host (allowed users only)")
    @app_commands.describe(command="the command, run in Claude's working directory")
    async def shell(interaction: discord.Interaction[Any], command: str) -> None:
        await adapter.command(interaction, "shell", command)

    @group.command(name="approve", description="Approvers: answer Claude's request to use a tool")
    @app_commands.describe(
        approval_id="the number in the request (🔐 Approval N)",
        decision="allow it once, always allow such a call, or deny it",
    )
    async def approve(
        interaction: discord.Interaction[Any],
        approval_id: app_commands.Range[int, 1],
        decision: Literal["allow", "always", "deny"],
    ) -> None:
        await adapter.command(interaction, "approve", f"{approval_id} {decision}")

    @group.command(name="answer", description="Answer Claude's question or plan (❓/📋 N)")
    @app_commands.describe(
        question_id="the number in the question (❓ Question N or 📋 Plan N)",
        answer="an option's number or label, or your own words (for a plan: your feedback)",
    )
    async def answer(
        interaction: discord.Interaction[Any],
        question_id: app_commands.Range[int, 1],
        answer: app_commands.Range[str, 1, 2000],
    ) -> None:
        await adapter.command(interaction, "answer", f"{question_id} {answer}")

    @group.command(name="approvals", description="The tool calls allowed always in this party")
    @app_commands.describe(reset="forget them all: every call asks again")
    async def approvals(interaction: discord.Interaction[Any], reset: bool = False) -> None:
        await adapter.command(interaction, "approvals", "reset" if reset else "")

    simple("leave", "Leave this channel's party")
    simple("status", "Claude's state, the queue and counters")
    simple("queue", "Who is waiting with what")
    simple("restart", "Host: restart Claude, same conversation")
    simple("new", "Host: start a fresh Claude conversation")
    return group


async def diagnose(settings: DiscordSettings, token: str) -> list[str]:
    """What would stop the bridge, each with its fix (for `concordia doctor`); [] if nothing.

    Logs in over REST only (no gateway session, so no IDENTIFY is spent).
    """
    discord.http.Route.BASE = settings.api_base.rstrip("/")
    client = discord.Client(intents=discord.Intents.default())
    problems: list[str] = []
    try:
        try:
            await client.login(token)
        except discord.LoginFailure:
            return [
                f"Discord refused the token in ${settings.token_env}: reset it in the Developer "
                "Portal (Bot → Reset Token) and export it again"
            ]
        app = await client.application_info()
        if not (app.flags.gateway_message_content or app.flags.gateway_message_content_limited):
            problems.append(
                "the Message Content intent is off: enable it in the Developer Portal "
                "(Bot → Privileged Gateway Intents → Message Content Intent)"
            )
        for channel_id in settings.channels:
            try:
                await client.fetch_channel(int(channel_id))
            except discord.HTTPException as exc:
                problems.append(
                    f"discord.channels: the bot cannot see channel {channel_id} ({exc.status}): "
                    "invite it to that server and give it View Channel"
                )
    except discord.HTTPException as exc:
        problems.append(f"Discord answered {exc.status} while checking: {exc.text}"[:300])
    finally:
        await client.close()
    return problems
