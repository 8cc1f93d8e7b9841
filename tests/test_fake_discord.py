"""The fake Discord is good enough for the real discord.py client: gateway, REST and faults."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, Self, TypeVar

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket

from tests.fakes.discord_api import (
    ALICE_ID,
    APPLICATION_ID,
    BOB_ID,
    BOT_USER_ID,
    BOT_USERNAME,
    CHANNEL_ID,
    GUILD_ID,
    OTHER_CHANNEL_ID,
    TOKEN,
    FakeDiscord,
    GatewayOp,
)

_DEADLINE_S = 10.0
_GUILD_READY_TIMEOUT_S = 0.05
_MESSAGE_CONTENT_INTENT = 1 << 15
_EPHEMERAL = 1 << 6
_SUPPRESS_EMBEDS = 1 << 2
_ZLIB_SUFFIX = b"\x00\x00\xff\xff"
_POST_MESSAGE = "POST /channels/{channel_id}/messages"
_CALLBACK = "POST /interactions/{webhook_id}/{webhook_token}/callback"
_FOLLOWUP = "POST /webhooks/{webhook_id}/{webhook_token}"
_EDIT_WEBHOOK_MESSAGE = "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}"
_EDIT_MESSAGE = "PATCH /channels/{channel_id}/messages/{message_id}"
_LOADING = 1 << 7
_TYPE_REPLY = 19
_COMPONENT_INTERACTION = 3

T = TypeVar("T")


async def _within(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(_DEADLINE_S):
        return await awaitable


def _concordia_commands(bot: _Bot) -> app_commands.Group:
    group = app_commands.Group(name="concordia", description="Drive the shared Claude session")

    @group.command(name="status", description="Show the session state")
    async def status(interaction: discord.Interaction) -> None:
        bot.invoked.put_nowait("status")
        await interaction.response.send_message("idle", ephemeral=True)

    @group.command(name="shell", description="Run a shell command")
    @app_commands.describe(command="The command line")
    async def shell(interaction: discord.Interaction, command: str) -> None:
        bot.invoked.put_nowait(f"shell {command}")
        await interaction.response.defer(thinking=True)
        await interaction.followup.send(f"ran {command}")
        await interaction.edit_original_response(content=f"ran {command}: done")
        await interaction.followup.send("second")

    return group


class _Action(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=r"t:(?P<a>\w+)"):
    """A button routed by custom_id ``t:<action>``; a click answers as the action says:
    ``reply`` (type 4, ephemeral), ``update`` (type 7, buttons removed), ``defer`` (type 6,
    then an ephemeral followup and an edit of @original), ``think`` (type 5, then a followup).
    """

    def __init__(self, action: str) -> None:
        super().__init__(discord.ui.Button(label=action.title(), custom_id=f"t:{action}"))
        self.action = action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(match["a"])

    async def callback(self, interaction: discord.Interaction) -> None:
        assert isinstance(interaction.client, _Bot)
        interaction.client.clicks.put_nowait(interaction)
        if self.action == "reply":
            await interaction.response.send_message(f"you clicked {self.action}", ephemeral=True)
        elif self.action == "update":
            await interaction.response.edit_message(content="decided", view=None)
        elif self.action == "defer":
            await interaction.response.defer()
            await interaction.followup.send("noted", ephemeral=True)
            await interaction.edit_original_response(content="decided later", view=None)
        else:
            await interaction.response.defer(ephemeral=True, thinking=True)
            await interaction.followup.send("thought about it", ephemeral=True)


def _actions(*names: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for name in names:
        view.add_item(_Action(name))
    return view


class _Bot(discord.Client):
    """A real discord.py client that reports what it saw through queues."""

    def __init__(self, *, message_content: bool = True) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        super().__init__(intents=intents, guild_ready_timeout=_GUILD_READY_TIMEOUT_S)
        self.tree = app_commands.CommandTree(self)
        self.tree.add_command(_concordia_commands(self), guild=discord.Object(GUILD_ID))
        self.readies: asyncio.Queue[None] = asyncio.Queue()
        self.resumes: asyncio.Queue[None] = asyncio.Queue()
        self.received: asyncio.Queue[discord.Message] = asyncio.Queue()
        self.invoked: asyncio.Queue[str] = asyncio.Queue()
        self.clicks: asyncio.Queue[discord.Interaction] = asyncio.Queue()

    async def setup_hook(self) -> None:
        self.add_dynamic_items(_Action)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Skip discord.py's 5 s sleep before every IDENTIFY but the first."""

    async def on_ready(self) -> None:
        self.readies.put_nowait(None)

    async def on_resumed(self) -> None:
        self.resumes.put_nowait(None)

    async def on_message(self, message: discord.Message) -> None:
        self.received.put_nowait(message)

    async def next_message_from(self, author_id: int) -> discord.Message:
        """The next message by ``author_id``; skips others (e.g. the bot's own echoes)."""
        while True:
            message = await _within(self.received.get())
            if message.author.id == author_id:
                return message


@contextlib.contextmanager
def _pointed_at(fake: FakeDiscord) -> Iterator[None]:
    """Point discord.py's class-level endpoints at ``fake``; restore them afterwards."""
    saved = (discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    discord.http.Route.BASE = fake.api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved


@contextlib.asynccontextmanager
async def _running(bot: _Bot) -> AsyncIterator[_Bot]:
    """``bot.start()`` in a task until on_ready; on exit close it and await the task."""
    async with bot:
        start = asyncio.create_task(bot.start(TOKEN), name="discord-client")
        try:
            ready = asyncio.create_task(bot.readies.get())
            try:
                await _within(asyncio.wait({ready, start}, return_when=asyncio.FIRST_COMPLETED))
            finally:
                ready.cancel()
            if start.done():
                start.result()  # raises whatever start() raised
                raise AssertionError("client.start() returned before on_ready")
            yield bot
        finally:
            await bot.close()
            await _within(start)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@pytest.fixture
def at_fake(fake: FakeDiscord) -> Iterator[FakeDiscord]:
    with _pointed_at(fake):
        yield fake


@pytest.fixture
async def bot(at_fake: FakeDiscord) -> AsyncIterator[_Bot]:
    async with _running(_Bot()) as client:
        yield client


def _gateway_ops(fake: FakeDiscord, op: int) -> list[Any]:
    return [frame for frame in fake.gateway_frames if frame.op == op]


# -- connecting -------------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_client_reaches_ready_and_sees_the_guild(bot: _Bot, fake: FakeDiscord) -> None:
    assert bot.user is not None
    assert (bot.user.id, bot.user.name, bot.user.bot) == (BOT_USER_ID, BOT_USERNAME, True)
    assert bot.application_id == APPLICATION_ID
    guild = bot.get_guild(GUILD_ID)
    assert guild is not None
    channel = guild.get_channel(CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    assert channel.name == "concordia"
    assert guild.get_channel(OTHER_CHANNEL_ID) is not None
    assert guild.me.id == BOT_USER_ID
    # Discord lists only the bot in GUILD_CREATE without the presences intent.
    assert guild.get_member(ALICE_ID) is None
    assert guild.member_count == 3
    assert bot.latency < 1.0  # the first heartbeat was acked before READY

    assert [c.route for c in fake.calls[:2]] == ["GET /users/@me", "GET /oauth2/applications/@me"]
    assert all(c.headers["Authorization"] == f"Bot {TOKEN}" for c in fake.calls)
    (identify,) = _gateway_ops(fake, GatewayOp.IDENTIFY)
    assert identify.path == "/gateway"
    assert identify.d["token"] == TOKEN
    assert identify.d["intents"] & _MESSAGE_CONTENT_INTENT


@pytest.mark.timeout(20)
async def test_heartbeats_at_the_hello_interval_are_acked() -> None:
    async with FakeDiscord(heartbeat_interval_ms=50) as server:
        with _pointed_at(server):
            async with _running(_Bot()) as client:
                while not server.gateway_received.empty():  # forget the frames before on_ready
                    server.gateway_received.get_nowait()
                beats = [
                    await _within(server.next_gateway_frame(GatewayOp.HEARTBEAT)) for _ in range(3)
                ]
                assert client.latency < 1.0
    # READY and GUILD_CREATE were s=1 and s=2; a heartbeat carries the last seq seen.
    assert [beat.d for beat in beats] == [2, 2, 2]


@pytest.mark.timeout(20)
async def test_wrong_token_fails_login(at_fake: FakeDiscord) -> None:
    async with _Bot() as client:
        with pytest.raises(discord.LoginFailure):
            await _within(client.start("not-the-token"))
    assert [(c.route, c.status) for c in at_fake.calls] == [("GET /users/@me", 401)]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("code", "error"),
    [(4014, discord.PrivilegedIntentsRequired), (4004, discord.ConnectionClosed)],
)
async def test_identify_closed_with_code_raises_from_start(
    at_fake: FakeDiscord, code: int, error: type[Exception]
) -> None:
    at_fake.close_code_next(code)
    async with _Bot() as client:
        with pytest.raises(error):
            await _within(client.start(TOKEN))
    assert len(_gateway_ops(at_fake, GatewayOp.IDENTIFY)) == 1
    assert at_fake.session_id is None


# -- receiving --------------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_on_message_gets_content_mentions_and_attachments(
    bot: _Bot, fake: FakeDiscord
) -> None:
    sent = await fake.send_message(ALICE_ID, "hello there", attachments=[("notes.txt", b"abc")])

    message = await bot.next_message_from(ALICE_ID)
    assert message.id == int(sent["id"])
    assert message.content == f"<@{BOT_USER_ID}> hello there"
    assert bot.user in message.mentions
    assert isinstance(message.author, discord.Member)
    assert message.channel.id == CHANNEL_ID
    assert message.guild is not None
    assert message.guild.id == GUILD_ID
    (attachment,) = message.attachments
    assert attachment.filename == "notes.txt"
    assert await _within(attachment.read()) == b"abc"
    assert fake.messages(CHANNEL_ID)[0]["content"] == message.content


@pytest.mark.timeout(20)
async def test_without_message_content_intent_only_mentions_carry_content(
    at_fake: FakeDiscord,
) -> None:
    async with _running(_Bot(message_content=False)) as client:
        await at_fake.send_message(BOB_ID, "not for you", mentions_bot=False)
        await at_fake.send_message(BOB_ID, "for you")
        unmentioned = await client.next_message_from(BOB_ID)
        mentioned = await client.next_message_from(BOB_ID)
    assert unmentioned.content == ""
    assert mentioned.content == f"<@{BOT_USER_ID}> for you"


@pytest.mark.timeout(20)
async def test_redelivered_dispatch_reaches_the_client_twice(bot: _Bot, fake: FakeDiscord) -> None:
    await fake.send_message(ALICE_ID, "once")
    first = await bot.next_message_from(ALICE_ID)

    frame = await fake.redeliver_last_dispatch()

    again = await bot.next_message_from(ALICE_ID)
    assert frame["t"] == "MESSAGE_CREATE"
    assert again.id == first.id


# -- posting ----------------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_post_edit_thread_and_reaction_are_recorded(bot: _Bot, fake: FakeDiscord) -> None:
    channel = bot.get_channel(CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)

    posted = await _within(channel.send("working"))
    post = await _within(fake.next_request(_POST_MESSAGE))
    assert (post.path, post.status, post.json["content"]) == (
        f"/channels/{CHANNEL_ID}/messages",
        200,
        "working",
    )
    echo = await bot.next_message_from(BOT_USER_ID)  # Discord echoes the bot's own posts
    assert echo.id == posted.id

    await _within(posted.edit(content="done"))
    edit = await _within(fake.next_request("PATCH /channels/{channel_id}/messages/{message_id}"))
    assert (edit.path, edit.json["content"]) == (
        f"/channels/{CHANNEL_ID}/messages/{posted.id}",
        "done",
    )

    thread = await _within(posted.create_thread(name="Run 1"))
    create = await _within(
        fake.next_request("POST /channels/{channel_id}/messages/{message_id}/threads")
    )
    assert (create.status, create.json["name"]) == (201, "Run 1")
    assert (thread.id, thread.parent_id, thread.type) == (
        posted.id,
        CHANNEL_ID,
        discord.ChannelType.public_thread,
    )

    inside = await _within(thread.send("inside"))
    post_in_thread = await _within(fake.next_request(_POST_MESSAGE))
    assert post_in_thread.path == f"/channels/{thread.id}/messages"

    await _within(posted.add_reaction("👀"))
    react = await _within(
        fake.next_request("PUT /channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me")
    )
    assert (react.path, react.status) == (
        f"/channels/{CHANNEL_ID}/messages/{posted.id}/reactions/👀/@me",
        204,
    )

    (stored,) = fake.messages(CHANNEL_ID)
    assert stored["content_history"] == ["working", "done"]
    assert stored["reactions"][0]["emoji"]["name"] == "👀"
    assert [m["id"] for m in fake.messages(thread.id)] == [str(inside.id)]
    assert fake.channel(thread.id)["parent_id"] == str(CHANNEL_ID)


@pytest.mark.timeout(20)
async def test_same_nonce_returns_the_same_message(bot: _Bot, fake: FakeDiscord) -> None:
    channel = bot.get_partial_messageable(CHANNEL_ID)

    first = await _within(channel.send("only once", nonce="concordia-1"))
    second = await _within(channel.send("only once", nonce="concordia-1"))
    third = await _within(channel.send("only once", nonce="concordia-2"))

    assert first.id == second.id != third.id
    assert [m["nonce"] for m in fake.messages(CHANNEL_ID)] == ["concordia-1", "concordia-2"]


@pytest.mark.timeout(20)
async def test_file_upload_becomes_a_downloadable_attachment(bot: _Bot, fake: FakeDiscord) -> None:
    channel = bot.get_partial_messageable(CHANNEL_ID)

    message = await _within(
        channel.send("full output", file=discord.File(io.BytesIO(b"long output"), "out.txt"))
    )

    upload = await _within(fake.next_request(_POST_MESSAGE))
    assert upload.files == (("out.txt", b"long output"),)
    assert upload.json["content"] == "full output"
    (attachment,) = message.attachments
    assert attachment.filename == "out.txt"
    assert await _within(attachment.read()) == b"long output"


@pytest.mark.timeout(20)
async def test_flags_allowed_mentions_and_replies(bot: _Bot, fake: FakeDiscord) -> None:
    channel = bot.get_partial_messageable(CHANNEL_ID)

    quiet = await _within(channel.send("see https://example.com", suppress_embeds=True))
    silent = await _within(
        channel.send(f"<@{ALICE_ID}> done", allowed_mentions=discord.AllowedMentions.none())
    )
    loud = await _within(channel.send(f"<@{ALICE_ID}> done"))
    await fake.send_message(BOB_ID, "a question")
    question = await bot.next_message_from(BOB_ID)
    reply = await _within(question.reply("an answer", mention_author=False))

    assert quiet.flags.suppress_embeds
    posts = [c.json for c in fake.calls if c.route == _POST_MESSAGE]
    assert posts[0]["flags"] == _SUPPRESS_EMBEDS
    assert posts[1]["allowed_mentions"] == {"parse": []}
    assert posts[3]["message_reference"]["message_id"] == question.id
    # raw_mentions parses the content; mentions comes from the payload Discord computed.
    assert silent.mentions == []
    assert [u.id for u in loud.mentions] == [ALICE_ID]
    assert reply.type is discord.MessageType.reply
    assert reply.reference is not None
    assert reply.reference.message_id == question.id
    assert reply.mentions == []


@pytest.mark.timeout(20)
async def test_content_over_2000_chars_is_refused(bot: _Bot, fake: FakeDiscord) -> None:
    channel = bot.get_partial_messageable(CHANNEL_ID)

    await _within(channel.send("x" * 2000))
    with pytest.raises(discord.HTTPException) as refused:
        await _within(channel.send("x" * 2001))

    assert (refused.value.status, refused.value.code) == (400, 50035)
    assert "2000 or fewer" in refused.value.text
    assert [len(m["content"]) for m in fake.messages(CHANNEL_ID)] == [2000]


# -- rate limits ------------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("is_global", [False, True])
async def test_429_on_message_create_is_retried_once(
    bot: _Bot, fake: FakeDiscord, is_global: bool
) -> None:
    fake.rate_limit(_POST_MESSAGE, retry_after=0.2, is_global=is_global)
    channel = bot.get_partial_messageable(CHANNEL_ID)

    message = await _within(channel.send("after a 429"))

    posts = [c for c in fake.calls if c.route == _POST_MESSAGE]
    assert [c.status for c in posts] == [429, 200]
    assert fake.rate_limited_count == 1
    assert [m["id"] for m in fake.messages(CHANNEL_ID)] == [str(message.id)]


# -- application commands ---------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_tree_sync_registers_guild_commands(bot: _Bot, fake: FakeDiscord) -> None:
    synced = await _within(bot.tree.sync(guild=discord.Object(GUILD_ID)))

    call = await _within(
        fake.next_request("PUT /applications/{application_id}/guilds/{guild_id}/commands")
    )
    assert call.path == f"/applications/{APPLICATION_ID}/guilds/{GUILD_ID}/commands"
    (stored,) = fake.commands(GUILD_ID)
    assert [c.id for c in synced] == [int(stored["id"])]
    assert stored["name"] == "concordia"
    assert {o["name"] for o in stored["options"]} == {"status", "shell"}
    assert fake.commands() == []


@pytest.mark.timeout(20)
async def test_slash_status_answers_ephemerally(bot: _Bot, fake: FakeDiscord) -> None:
    await _within(bot.tree.sync(guild=discord.Object(GUILD_ID)))

    interaction = await fake.send_interaction(ALICE_ID, "concordia", "status")

    assert await _within(bot.invoked.get()) == "status"
    call = await _within(fake.next_request(_CALLBACK))
    assert call.path == f"/interactions/{interaction['id']}/{interaction['token']}/callback"
    assert call.status == 200
    assert "Authorization" not in call.headers
    assert call.json["type"] == 4
    assert (call.json["data"]["content"], call.json["data"]["flags"]) == ("idle", _EPHEMERAL)
    (response,) = fake.interaction_messages(int(interaction["id"]))
    assert response["flags"] & _EPHEMERAL
    assert fake.messages(CHANNEL_ID) == []  # ephemeral replies are not in the channel
    async with aiohttp.ClientSession() as http:
        again = f"{fake.api_base}{call.path}"
        async with http.post(again, json={"type": 4, "data": {"content": "x"}}) as twice:
            assert (twice.status, (await twice.json())["code"]) == (400, 40060)


@pytest.mark.timeout(20)
async def test_deferred_response_then_followups(bot: _Bot, fake: FakeDiscord) -> None:
    await _within(bot.tree.sync(guild=discord.Object(GUILD_ID)))

    interaction = await fake.send_interaction(ALICE_ID, "concordia", "shell", {"command": "ls"})

    assert await _within(bot.invoked.get()) == "shell ls"
    defer = await _within(fake.next_request(_CALLBACK))
    assert defer.json == {"type": 5}
    followup = await _within(fake.next_request(_FOLLOWUP))
    assert followup.path == f"/webhooks/{APPLICATION_ID}/{interaction['token']}"
    assert (followup.query["wait"], followup.json["content"]) == ("1", "ran ls")
    edit = await _within(fake.next_request(_EDIT_WEBHOOK_MESSAGE))
    assert edit.path.endswith("/messages/@original")
    await _within(fake.next_request(_FOLLOWUP))

    original, second = fake.interaction_messages(int(interaction["id"]))
    # The first followup after a defer fills the "thinking" message instead of a new one.
    assert original["content_history"] == ["", "ran ls", "ran ls: done"]
    assert second["content"] == "second"
    assert [m["id"] for m in fake.messages(CHANNEL_ID)] == [original["id"], second["id"]]


# -- message components -----------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_buttons_are_stored_numbered_and_taken_away_by_an_edit(
    bot: _Bot, fake: FakeDiscord
) -> None:
    channel = bot.get_partial_messageable(CHANNEL_ID)
    pinged = discord.AllowedMentions(
        users=[discord.Object(ALICE_ID)], everyone=False, roles=False, replied_user=False
    )

    posted = await _within(
        channel.send(
            f"<@{ALICE_ID}> <@{BOB_ID}> pick",
            view=_actions("reply", "update"),
            allowed_mentions=pinged,
        )
    )
    await _within(
        posted.edit(content="picked", view=None, allowed_mentions=discord.AllowedMentions.none())
    )

    post = next(c for c in fake.calls if c.route == _POST_MESSAGE)
    assert [b["custom_id"] for b in post.json["components"][0]["components"]] == [
        "t:reply",
        "t:update",
    ]
    # Discord numbers the components it was sent without an id: the row, then its buttons.
    (row,) = posted.components
    assert isinstance(row, discord.ActionRow)
    assert [(c.id, getattr(c, "custom_id", None)) for c in (row, *row.children)] == [
        (1, None),
        (2, "t:reply"),
        (3, "t:update"),
    ]
    assert [u.id for u in posted.mentions] == [ALICE_ID], "allowed_mentions let only Alice ping"
    (stored,) = fake.messages(CHANNEL_ID)
    assert stored["components"] == []
    assert stored["content_history"] == [f"<@{ALICE_ID}> <@{BOB_ID}> pick", "picked"]
    assert stored["allowed_mentions_history"] == [
        {"parse": [], "users": [ALICE_ID]},
        {"parse": []},
    ]
    assert stored["mentions"] == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("components", "field", "code"),
    [
        (
            [{"type": 2, "style": 1, "label": "x", "custom_id": "a"}],
            ("0", "type"),
            "BASE_TYPE_CHOICES",
        ),
        ([{"type": 1, "components": []}], ("0", "components"), "BASE_TYPE_BAD_LENGTH"),
        (
            [{"type": 1, "components": [{"type": 2, "style": 1, "label": "x"}]}],
            ("0", "components", "0", "custom_id"),
            "BASE_TYPE_REQUIRED",
        ),
        (
            [
                {
                    "type": 1,
                    "components": [
                        {"type": 2, "style": 1, "label": "x", "custom_id": "same"},
                        {"type": 2, "style": 4, "label": "y", "custom_id": "same"},
                    ],
                }
            ],
            ("0", "components", "1", "custom_id"),
            "COMPONENT_CUSTOM_ID_DUPLICATED",
        ),
        (
            [{"type": 1, "components": [{"type": 2, "style": 1, "custom_id": "c" * 101}]}],
            ("0", "components", "0", "custom_id"),
            "BASE_TYPE_MAX_LENGTH",
        ),
    ],
    ids=[
        "button-outside-a-row",
        "empty-row",
        "no-custom-id",
        "duplicate-custom-id",
        "long-custom-id",
    ],
)
async def test_malformed_components_are_refused(
    fake: FakeDiscord, components: list[dict[str, Any]], field: tuple[str, ...], code: str
) -> None:
    auth = {"Authorization": f"Bot {TOKEN}"}
    body = {"content": "pick", "components": components}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{fake.api_base}/channels/{CHANNEL_ID}/messages", json=body, headers=auth
        ) as sent,
    ):
        refused = await sent.json()

    assert (sent.status, refused["code"]) == (400, 50035)
    errors = refused["errors"]["components"]
    for key in field:
        errors = errors[key]
    assert errors["_errors"][0]["code"] == code
    assert fake.messages(CHANNEL_ID) == []


@pytest.mark.timeout(20)
async def test_a_click_reaches_the_dynamic_item_and_its_reply_is_ephemeral(
    bot: _Bot, fake: FakeDiscord
) -> None:
    posted = await _within(
        bot.get_partial_messageable(CHANNEL_ID).send("pick", view=_actions("reply"))
    )

    click = await fake.click_button(BOB_ID, posted.id, "t:reply")

    interaction = await _within(bot.clicks.get())
    assert interaction.type is discord.InteractionType.component
    data: dict[str, Any] = dict(interaction.data or {})
    assert (data["custom_id"], data["component_type"]) == ("t:reply", 2)
    assert interaction.message is not None
    assert interaction.message.id == posted.id
    assert interaction.user.id == BOB_ID
    assert interaction.channel_id == CHANNEL_ID
    callback = await _within(fake.next_request(_CALLBACK))
    assert callback.path == f"/interactions/{click['id']}/{click['token']}/callback"
    assert (callback.status, callback.json["type"]) == (200, 4)
    (reply,) = fake.interaction_messages(int(click["id"]))
    assert reply["content"] == "you clicked reply"
    assert reply["flags"] & _EPHEMERAL
    # An answer to a button shows as a reply to the message the button is on.
    assert reply["type"] == _TYPE_REPLY
    assert reply["message_reference"]["message_id"] == str(posted.id)
    assert reply["interaction_metadata"]["type"] == _COMPONENT_INTERACTION
    assert reply["interaction_metadata"]["interacted_message_id"] == str(posted.id)
    assert [m["id"] for m in fake.messages(CHANNEL_ID)] == [str(posted.id)], "ephemeral"


@pytest.mark.timeout(20)
async def test_update_message_edits_the_clicked_message(bot: _Bot, fake: FakeDiscord) -> None:
    posted = await _within(
        bot.get_partial_messageable(CHANNEL_ID).send("pick", view=_actions("update", "reply"))
    )

    click = await fake.click_button(ALICE_ID, posted.id, "t:update")

    callback = await _within(fake.next_request(_CALLBACK))
    assert (callback.status, callback.json["type"]) == (200, 7)
    assert callback.json["data"]["components"] == []
    (stored,) = fake.messages(CHANNEL_ID)
    assert (stored["content"], stored["components"]) == ("decided", [])
    assert fake.interaction_messages(int(click["id"])) == [], "type 7 creates no message"
    with pytest.raises(ValueError, match="shows no button"):
        await fake.click_button(ALICE_ID, posted.id, "t:reply")  # gone with the edit


@pytest.mark.timeout(20)
async def test_deferred_update_then_followup_and_an_edit_of_the_clicked_message(
    bot: _Bot, fake: FakeDiscord
) -> None:
    posted = await _within(
        bot.get_partial_messageable(CHANNEL_ID).send("pick", view=_actions("defer"))
    )

    click = await fake.click_button(ALICE_ID, posted.id, "t:defer")

    defer = await _within(fake.next_request(_CALLBACK))
    assert defer.json == {"type": 6}
    followup = await _within(fake.next_request(_FOLLOWUP))
    assert followup.status == 200
    edit = await _within(fake.next_request(_EDIT_WEBHOOK_MESSAGE))
    assert (edit.status, edit.path.rsplit("/", 1)[1]) == (200, "@original")
    (noted,) = fake.interaction_messages(int(click["id"]))
    assert noted["content"] == "noted"
    assert noted["flags"] & _EPHEMERAL
    (stored,) = fake.messages(CHANNEL_ID)
    assert stored["content_history"] == ["pick", "decided later"]
    assert stored["components"] == []


@pytest.mark.timeout(20)
async def test_a_thinking_defer_on_a_click_is_filled_by_the_followup(
    bot: _Bot, fake: FakeDiscord
) -> None:
    posted = await _within(
        bot.get_partial_messageable(CHANNEL_ID).send("pick", view=_actions("think"))
    )

    click = await fake.click_button(ALICE_ID, posted.id, "t:think")

    defer = await _within(fake.next_request(_CALLBACK))
    assert defer.json == {"type": 5, "data": {"flags": _EPHEMERAL}}
    await _within(fake.next_request(_FOLLOWUP))
    (answer,) = fake.interaction_messages(int(click["id"]))
    assert answer["content_history"] == ["", "thought about it"]
    assert answer["flags"] & _EPHEMERAL
    assert not answer["flags"] & _LOADING
    (stored,) = fake.messages(CHANNEL_ID)
    assert [b["custom_id"] for b in stored["components"][0]["components"]] == ["t:think"]


@pytest.mark.timeout(20)
async def test_clicks_the_client_cannot_make_are_refused(bot: _Bot, fake: FakeDiscord) -> None:
    channel = bot.get_partial_messageable(CHANNEL_ID)
    plain = await _within(channel.send("no buttons"))
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(label="Reply", custom_id="t:reply", disabled=True))
    disabled = await _within(channel.send("greyed out", view=view))

    with pytest.raises(ValueError, match="shows no button"):
        await fake.click_button(ALICE_ID, plain.id, "t:reply")
    with pytest.raises(ValueError, match="disabled"):
        await fake.click_button(ALICE_ID, disabled.id, "t:reply")
    with pytest.raises(ValueError, match="does not exist"):
        await fake.click_button(ALICE_ID, 42, "t:reply")


@pytest.mark.timeout(20)
async def test_a_slash_command_cannot_be_answered_by_updating_a_message(fake: FakeDiscord) -> None:
    auth = {"Authorization": f"Bot {TOKEN}"}
    command = {"name": "concordia", "description": "Drive the shared Claude session"}
    async with aiohttp.ClientSession() as http:
        commands_url = f"{fake.api_base}/applications/{APPLICATION_ID}/guilds/{GUILD_ID}/commands"
        async with http.put(commands_url, json=[command], headers=auth) as synced:
            assert synced.status == 200
        async with http.ws_connect(f"{fake.gateway_url}?v=10&encoding=json") as gateway:
            await _within(gateway.receive_json())  # HELLO
            identify = {"token": TOKEN, "intents": 1, "properties": {}}
            await gateway.send_json({"op": GatewayOp.IDENTIFY, "d": identify})
            await _within(gateway.receive_json())  # READY
            interaction = await fake.send_interaction(ALICE_ID, "concordia", None)
            url = (
                f"{fake.api_base}/interactions/{interaction['id']}/{interaction['token']}/callback"
            )
            for response_type in (6, 7):
                body = {"type": response_type, "data": {"content": "x"}}
                async with http.post(url, json=body) as refused:
                    assert (refused.status, (await refused.json())["code"]) == (400, 50035)
            async with http.post(url, json={"type": 4, "data": {"content": "ok"}}) as answered:
                assert answered.status == 204, "still unanswered after the refusals"


# -- gateway faults ---------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("code", [4000, None], ids=["close-4000", "tcp-abort"])
async def test_dropped_gateway_resumes_and_replays(
    bot: _Bot, fake: FakeDiscord, code: int | None
) -> None:
    session_id = fake.session_id

    await fake.drop_gateway(code=code)
    sent = await fake.send_message(ALICE_ID, "while you were away")

    resume = await _within(fake.next_gateway_frame(GatewayOp.RESUME))
    assert (resume.path, resume.d["session_id"]) == ("/gateway-resume", session_id)
    await _within(bot.resumes.get())
    message = await bot.next_message_from(ALICE_ID)
    assert message.id == int(sent["id"])
    assert sent["id"] in [f["d"].get("id") for f in fake.replayed if f["t"] == "MESSAGE_CREATE"]
    assert len(_gateway_ops(fake, GatewayOp.IDENTIFY)) == 1


@pytest.mark.timeout(20)
async def test_reconnect_request_makes_the_client_resume(bot: _Bot, fake: FakeDiscord) -> None:
    await fake.reconnect_request()

    resume = await _within(fake.next_gateway_frame(GatewayOp.RESUME))
    await _within(bot.resumes.get())
    assert resume.d["session_id"] == fake.session_id
    await fake.send_message(ALICE_ID, "still here")
    assert (await bot.next_message_from(ALICE_ID)).content.endswith("still here")


@pytest.mark.timeout(20)
async def test_invalid_session_makes_the_client_identify_again(
    bot: _Bot, fake: FakeDiscord
) -> None:
    first_session = fake.session_id

    await fake.invalidate_session(resumable=False)

    await _within(bot.readies.get())
    identifies = _gateway_ops(fake, GatewayOp.IDENTIFY)
    assert [f.path for f in identifies] == ["/gateway", "/gateway"]
    assert fake.session_id not in (None, first_session)
    assert _gateway_ops(fake, GatewayOp.RESUME) == []
    await fake.send_message(ALICE_ID, "new session")
    assert (await bot.next_message_from(ALICE_ID)).content.endswith("new session")


@pytest.mark.timeout(20)
async def test_resumable_invalid_session_makes_the_client_resume(
    bot: _Bot, fake: FakeDiscord
) -> None:
    await fake.invalidate_session(resumable=True)

    resume = await _within(fake.next_gateway_frame(GatewayOp.RESUME))
    await _within(bot.resumes.get())
    assert resume.d["session_id"] == fake.session_id
    assert len(_gateway_ops(fake, GatewayOp.IDENTIFY)) == 1


# -- the fake on its own ----------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_rest_auth_errors_and_json_content_type(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{fake.api_base}/users/@me") as anonymous:
            assert anonymous.status == 401
            assert anonymous.headers["Content-Type"] == "application/json"
            assert await anonymous.json() == {"message": "401: Unauthorized", "code": 0}
        auth = {"Authorization": f"Bot {TOKEN}"}
        async with http.get(f"{fake.api_base}/users/@me", headers=auth) as me:
            assert me.status == 200
            assert me.headers["Content-Type"] == "application/json"
            assert int(me.headers["X-RateLimit-Remaining"]) > 0
            assert (await me.json())["username"] == BOT_USERNAME
        async with http.get(f"{fake.api_base}/no/such/route", headers=auth) as missing:
            assert missing.status == 404
            assert await missing.json() == {"message": "404: Not Found", "code": 0}
        # Interaction callbacks are authorised by the token in the path, not a header.
        async with http.post(f"{fake.api_base}/interactions/1/nope/callback", json={}) as cb:
            assert cb.status == 404
            assert (await cb.json())["code"] == 10062


@pytest.mark.timeout(20)
async def test_gateway_plain_and_zlib_stream(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as http:
        plain_url = f"{fake.gateway_url}?v=10&encoding=json"
        async with http.ws_connect(plain_url) as plain:
            hello = await _within(plain.receive_json())
            assert (hello["op"], hello["d"]["heartbeat_interval"]) == (10, 41250)

        async with http.ws_connect(plain_url + "&compress=zlib-stream") as packed:
            inflate = zlib.decompressobj()

            async def receive() -> dict[str, Any]:
                data = await _within(packed.receive_bytes())
                assert data.endswith(_ZLIB_SUFFIX)
                frame: dict[str, Any] = json.loads(inflate.decompress(data))
                return frame

            assert (await receive())["op"] == GatewayOp.HELLO
            identify = {"token": TOKEN, "intents": 1, "properties": {}}
            await packed.send_json({"op": GatewayOp.IDENTIFY, "d": identify})
            ready, guild = await receive(), await receive()
            assert (ready["t"], ready["s"]) == ("READY", 1)
            assert ready["d"]["resume_gateway_url"] == fake.resume_gateway_url
            assert (guild["t"], guild["s"]) == ("GUILD_CREATE", 2)

        async with http.ws_connect(plain_url) as refused:
            await _within(refused.receive_json())
            await refused.send_json({"op": GatewayOp.IDENTIFY, "d": {"token": "wrong"}})
            closed = await _within(refused.receive())
            assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 4004)


@pytest.mark.timeout(20)
async def test_gateway_serves_the_compression_discord_py_asks_for(fake: FakeDiscord) -> None:
    # zlib-stream here; zstd-stream wherever zstandard (or Python 3.14) is importable.
    inflate = discord.utils._ActiveDecompressionContext()
    url = f"{fake.gateway_url}?v=10&encoding=json&compress={inflate.COMPRESSION_TYPE}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        text = inflate.decompress(await _within(ws.receive_bytes()))
    assert text is not None
    assert json.loads(text)["op"] == GatewayOp.HELLO


@pytest.mark.timeout(20)
async def test_misuse_of_the_fake_raises(fake: FakeDiscord) -> None:
    with pytest.raises(RuntimeError, match="no gateway session"):
        await fake.send_message(ALICE_ID, "too early")
    with pytest.raises(ValueError, match="serves no route"):
        fake.rate_limit("POST /channels/{id}/messages")
    with pytest.raises(ValueError, match="4000-4999"):
        fake.close_code_next(1000)
