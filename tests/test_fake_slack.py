"""The fake Slack is good enough for the real slack-bolt and slack-sdk: Socket Mode, Web API."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from tests.fakes.slack_api import (
    ACK_DEADLINE_S,
    ALICE_ID,
    APP_ID,
    APP_TOKEN,
    BOB_ID,
    BOT_ID,
    BOT_TOKEN,
    BOT_USER_ID,
    CHANNEL_ID,
    FILE_DOWNLOAD,
    INTERACTIVE,
    MAX_TEXT_CHARS,
    OTHER_CHANNEL_ID,
    RESPONSE_URL,
    SLASH_COMMAND,
    TEAM_ID,
    FakeSlack,
    SharedFile,
)

_DEADLINE_S = 10.0
# Short, so a dropped socket is noticed quickly: slack-sdk only finds an aborted connection
# on its next monitor tick, ping_interval seconds later.
_FAST_PING_INTERVAL_S = 0.3
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")

T = TypeVar("T")


async def _within(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(_DEADLINE_S):
        return await awaitable


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """slack-sdk sends every request through $HTTPS_PROXY, ignoring NO_PROXY, even to 127.0.0.1."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server


def _client(fake: FakeSlack, token: str = BOT_TOKEN) -> AsyncWebClient:
    return AsyncWebClient(token=token, base_url=fake.api_url)


class _Bot:
    """A real bolt AsyncApp against the fake that reports what its listeners saw."""

    def __init__(self, fake: FakeSlack, *, token: str = BOT_TOKEN) -> None:
        self.app = AsyncApp(client=_client(fake, token))
        self.mentions: asyncio.Queue[tuple[dict[str, Any], dict[str, Any]]] = asyncio.Queue()

        @self.app.event("app_mention")
        async def on_mention(event: dict[str, Any], request: Any) -> None:
            self.mentions.put_nowait((event, dict(request.headers)))

    async def next_mention(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The next app_mention event and the bolt request headers it came with."""
        return await _within(self.mentions.get())


@contextlib.asynccontextmanager
async def _connected(
    fake: FakeSlack, app: AsyncApp, *, ping_interval_s: float = 10.0
) -> AsyncIterator[AsyncSocketModeHandler]:
    """A Socket Mode handler connected to ``fake`` (hello received); closed on exit."""
    handler = AsyncSocketModeHandler(app, APP_TOKEN, ping_interval=ping_interval_s)
    try:
        await _within(handler.connect_async())  # type: ignore[no-untyped-call]
        await _within(fake.next_connection())
        yield handler
    finally:
        await _within(handler.close_async())  # type: ignore[no-untyped-call]


def _methods(fake: FakeSlack) -> list[str]:
    return [call.method for call in fake.calls]


# -- Socket Mode: events ----------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_mention_is_answered_in_its_thread_and_edited(fake: FakeSlack) -> None:
    app = AsyncApp(client=_client(fake))
    mentions: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    replied: asyncio.Queue[str] = asyncio.Queue()

    # One listener: bolt runs only the first listener that matches an event.
    @app.event("app_mention")
    async def answer(event: dict[str, Any], client: AsyncWebClient) -> None:
        mentions.put_nowait(event)
        posted = await client.chat_postMessage(
            channel=event["channel"],
            thread_ts=event["ts"],
            text="working…",
            unfurl_links=False,
            unfurl_media=False,
        )
        await client.chat_update(channel=posted["channel"], ts=posted["ts"], text="done")
        replied.put_nowait(posted["ts"])

    async with _connected(fake, app):
        envelope = await fake.send_mention(ALICE_ID, "hello there")
        event = await _within(mentions.get())
        reply_ts = await _within(replied.get())
        ack = await fake.wait_ack(envelope["envelope_id"], ACK_DEADLINE_S)

    assert event["text"] == f"<@{BOT_USER_ID}> hello there"
    assert (event["user"], event["channel"], event["type"]) == (ALICE_ID, CHANNEL_ID, "app_mention")
    assert envelope["payload"]["event_id"].startswith("Ev")
    assert (ack.payload, ack.delivery) == (None, 1)

    parent, reply = fake.messages(CHANNEL_ID, thread_ts=event["ts"])
    assert (parent["user"], parent["text"], parent["reply_count"]) == (ALICE_ID, event["text"], 1)
    assert reply["ts"] == reply_ts
    assert (reply["user"], reply["thread_ts"]) == (BOT_USER_ID, event["ts"])
    assert reply["text_history"] == ["working…", "done"]
    assert (reply["unfurl_links"], reply["unfurl_media"]) == (False, False)
    assert [m["ts"] for m in fake.messages(CHANNEL_ID)] == [event["ts"]]  # reply is threaded

    post = next(c for c in fake.calls if c.method == "chat.postMessage")
    assert post.token == BOT_TOKEN
    assert post.params["thread_ts"] == event["ts"]
    assert post.params["team_id"] == TEAM_ID  # bolt's per-request client adds it
    assert _methods(fake)[0] == "apps.connections.open"
    opened = fake.calls[0]
    assert (opened.token, opened.error) == (APP_TOKEN, None)
    assert _methods(fake).count("auth.test") == 1  # bolt authorises lazily, then caches


@pytest.mark.timeout(20)
async def test_events_are_acked_before_the_listener_finishes_by_default(fake: FakeSlack) -> None:
    app = AsyncApp(client=_client(fake))
    started, release = asyncio.Event(), asyncio.Event()

    @app.event("app_mention")
    async def slow(event: dict[str, Any]) -> None:
        started.set()
        await release.wait()

    async with _connected(fake, app):
        envelope = await fake.send_mention(BOB_ID, "take your time")
        await _within(started.wait())
        # The listener is still blocked, yet the ack arrives: bolt acked before running it.
        ack = await fake.wait_ack(envelope["envelope_id"], ACK_DEADLINE_S)
        release.set()
    assert ack.elapsed_s < ACK_DEADLINE_S


@pytest.mark.timeout(20)
async def test_process_before_response_acks_only_after_the_listener_returns(
    fake: FakeSlack,
) -> None:
    app = AsyncApp(client=_client(fake), process_before_response=True)
    started, release = asyncio.Event(), asyncio.Event()
    returned_at_s: list[float] = []

    @app.event("app_mention")
    async def store_first(event: dict[str, Any]) -> None:
        started.set()
        await release.wait()
        returned_at_s.append(time.monotonic())

    async with _connected(fake, app):
        envelope = await fake.send_mention(BOB_ID, "persist me first")
        await _within(started.wait())
        assert fake.ack_log == []
        release.set()
        ack = await fake.wait_ack(envelope["envelope_id"], ACK_DEADLINE_S)
    assert ack.received_at_s > returned_at_s[0]


@pytest.mark.timeout(20)
async def test_an_event_not_acked_in_time_is_resent_as_a_retry() -> None:
    async with FakeSlack(retry_unacked_after_s=0.2) as fake:
        app = AsyncApp(client=_client(fake), process_before_response=True)
        seen: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
        release = asyncio.Event()

        @app.event("app_mention")
        async def too_slow(body: dict[str, Any], request: Any) -> None:
            seen.put_nowait((body["event_id"], request.headers.get("x-slack-retry-num")))
            await release.wait()

        async with _connected(fake, app):
            envelope = await fake.send_mention(ALICE_ID, "slow")
            first = await _within(seen.get())
            second = await _within(seen.get())  # resent while the first run still holds the ack
            release.set()
            ack = await fake.wait_ack(envelope["envelope_id"], ACK_DEADLINE_S)

    event_id = envelope["payload"]["event_id"]
    assert first == (event_id, ["0"])
    assert second == (event_id, ["1"])
    assert ack.delivery == 2


@pytest.mark.timeout(20)
async def test_redelivered_envelope_reaches_the_listener_again(fake: FakeSlack) -> None:
    bot = _Bot(fake)
    async with _connected(fake, bot.app):
        envelope = await fake.send_mention(ALICE_ID, "only once please")
        first, first_headers = await bot.next_mention()
        resent = await fake.redeliver(envelope)
        second, second_headers = await bot.next_mention()
        ack = await fake.wait_ack(envelope["envelope_id"], ACK_DEADLINE_S)

    assert resent["envelope_id"] == envelope["envelope_id"]
    assert (resent["retry_attempt"], resent["retry_reason"]) == (1, "timeout")
    assert resent["payload"]["event_id"] == envelope["payload"]["event_id"]
    assert (first["ts"], first["channel"]) == (second["ts"], second["channel"])  # the dedupe key
    # Slack marks a first delivery retry_attempt 0, so bolt sets the header on every event.
    assert first_headers["x-slack-retry-num"] == ["0"]
    assert second_headers["x-slack-retry-num"] == ["1"]
    assert second_headers["x-slack-retry-reason"] == ["timeout"]
    assert ack.delivery == 2
    assert [a.envelope_id for a in fake.ack_log] == [envelope["envelope_id"]] * 2


@pytest.mark.timeout(20)
async def test_mention_in_a_thread_carries_thread_ts(fake: FakeSlack) -> None:
    bot = _Bot(fake)
    async with _connected(fake, bot.app):
        top = await fake.send_mention(ALICE_ID, "start")
        top_ts = top["payload"]["event"]["ts"]
        await fake.send_mention(BOB_ID, "me too", thread_ts=top_ts)
        await bot.next_mention()
        reply, _ = await bot.next_mention()
    assert (reply["thread_ts"], reply["parent_user_id"]) == (top_ts, ALICE_ID)
    assert [m["user"] for m in fake.messages(CHANNEL_ID, thread_ts=top_ts)] == [ALICE_ID, BOB_ID]
    with pytest.raises(ValueError, match="no message"):
        await fake.send_mention(BOB_ID, "lost", thread_ts="1.000001")


# -- Socket Mode: reconnects --------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_refresh_requested_reconnects_through_a_new_url(fake: FakeSlack) -> None:
    bot = _Bot(fake)
    async with _connected(fake, bot.app):
        old = await fake.request_refresh()
        new = await _within(fake.next_connection())
        envelope = await fake.send_mention(ALICE_ID, "still there?")
        event, _ = await bot.next_mention()
        ack = await fake.wait_ack(envelope["envelope_id"], ACK_DEADLINE_S)

    assert new != old
    assert ack.connection_id == new
    assert event["text"].endswith("still there?")
    assert _methods(fake).count("apps.connections.open") == 2


@pytest.mark.timeout(20)
async def test_dropped_socket_reconnects_and_gets_what_was_sent_meanwhile(fake: FakeSlack) -> None:
    bot = _Bot(fake)
    async with _connected(fake, bot.app, ping_interval_s=_FAST_PING_INTERVAL_S):
        old = await fake.drop_socket()
        dropped_at_s = time.monotonic()
        envelope = await fake.send_mention(BOB_ID, "sent while you were away")
        new = await _within(fake.next_connection())
        reconnect_s = time.monotonic() - dropped_at_s
        event, _ = await bot.next_mention()
        ack = await fake.wait_ack(envelope["envelope_id"], ACK_DEADLINE_S)

    assert new != old
    assert ack.connection_id == new
    assert event["ts"] == envelope["payload"]["event"]["ts"]
    assert _methods(fake).count("apps.connections.open") == 2
    # slack-sdk notices an aborted socket on its monitor tick, not at once.
    assert reconnect_s < 4 * _FAST_PING_INTERVAL_S + 1.0


@pytest.mark.timeout(20)
async def test_connection_url_is_single_use(fake: FakeSlack) -> None:
    opened = await _client(fake, APP_TOKEN).apps_connections_open(app_token=APP_TOKEN)
    url = opened["url"]
    assert url.startswith(f"{fake.api_url.replace('http', 'ws', 1).removesuffix('/api/')}/link/")
    assert "?ticket=" in url
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            hello = await _within(ws.receive_json())
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url)
    assert hello["type"] == "hello"
    assert hello["connection_info"] == {"app_id": APP_ID}
    assert hello["num_connections"] == 1
    assert refused.value.status == 401


# -- slash commands ---------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_slash_command_ack_carries_text_and_respond_hits_response_url(
    fake: FakeSlack,
) -> None:
    app = AsyncApp(client=_client(fake))
    responded: asyncio.Queue[int] = asyncio.Queue()

    @app.command(SLASH_COMMAND)
    async def concordia(ack: Any, respond: Any, command: dict[str, Any]) -> None:
        await ack(text=f"joining as {command['user_name']}")
        response = await respond(text="you joined", response_type="ephemeral")
        responded.put_nowait(response.status_code)

    async with _connected(fake, app):
        envelope = await fake.send_slash_command(ALICE_ID, "join abc123")
        ack = await fake.wait_ack(envelope["envelope_id"], ACK_DEADLINE_S)
        call = await _within(fake.next_call(RESPONSE_URL))
        status = await _within(responded.get())

    payload = envelope["payload"]
    assert (payload["command"], payload["text"], payload["user_id"]) == (
        SLASH_COMMAND,
        "join abc123",
        ALICE_ID,
    )
    assert ack.payload == {"text": "joining as alice"}
    assert ack.elapsed_s < ACK_DEADLINE_S
    assert call.params == {"text": "you joined", "response_type": "ephemeral"}
    assert status == 200
    (ephemeral,) = fake.ephemerals
    assert (ephemeral["user"], ephemeral["channel"], ephemeral["text"]) == (
        ALICE_ID,
        CHANNEL_ID,
        "you joined",
    )
    assert fake.messages(CHANNEL_ID) == []  # ephemeral answers are not channel messages


@pytest.mark.timeout(20)
async def test_response_url_is_refused_after_five_uses(fake: FakeSlack) -> None:
    envelope = await fake.send_slash_command(BOB_ID, "status")  # no socket: kept pending
    url = envelope["payload"]["response_url"]
    async with aiohttp.ClientSession() as session:
        statuses = []
        for n in range(6):
            async with session.post(url, json={"text": f"#{n}"}) as response:
                statuses.append((response.status, await response.text()))
    assert statuses == [(200, "ok")] * 5 + [(404, "used_url")]


@pytest.mark.timeout(20)
async def test_views_open_takes_a_trigger_id_once(fake: FakeSlack) -> None:
    envelope = await fake.send_slash_command(BOB_ID, "invite")
    client = _client(fake)
    view = {"type": "modal", "title": {"type": "plain_text", "text": "Invite"}, "blocks": []}
    opened = await client.views_open(trigger_id=envelope["payload"]["trigger_id"], view=view)
    with pytest.raises(SlackApiError) as again:
        await client.views_open(trigger_id=envelope["payload"]["trigger_id"], view=view)
    assert opened["view"]["id"].startswith("V")
    assert fake.views[0]["title"]["text"] == "Invite"
    assert again.value.response["error"] == "exchanged_trigger_id"


# -- buttons (interactive envelopes) -----------------------------------------------------------


_BUTTONS: list[dict[str, Any]] = [
    {
        "type": "section",
        "block_id": "ask",
        "text": {"type": "mrkdwn", "text": "May I?"},
    },
    {
        "type": "actions",
        "block_id": "answers",
        "elements": [
            {
                "type": "button",
                "action_id": "answer_yes",
                "text": {"type": "plain_text", "text": "Yes"},
                "value": "7",
                "style": "primary",
            },
            {
                "type": "button",
                "action_id": "answer_no",
                "text": {"type": "plain_text", "text": "No"},
                "value": "7",
                "style": "danger",
            },
        ],
    },
]


async def _post_buttons(fake: FakeSlack) -> tuple[str, str]:
    """A mention and the bot's threaded reply with two buttons: (thread ts, reply ts)."""
    mention = await fake.send_mention(ALICE_ID, "ask me")
    thread_ts = mention["payload"]["event"]["ts"]
    posted = await _client(fake).chat_postMessage(
        channel=CHANNEL_ID, thread_ts=thread_ts, text="May I?", blocks=_BUTTONS
    )
    assert posted["message"]["blocks"] == _BUTTONS  # returned as stored
    return thread_ts, str(posted["ts"])


@pytest.mark.timeout(20)
async def test_a_click_reaches_bolts_action_listener_and_respond_answers_the_clicker_alone(
    fake: FakeSlack,
) -> None:
    app = AsyncApp(client=_client(fake))
    clicks: asyncio.Queue[tuple[dict[str, Any], dict[str, Any]]] = asyncio.Queue()
    responded: asyncio.Queue[int] = asyncio.Queue()

    @app.action("answer_yes")
    async def yes(ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        await ack()
        clicks.put_nowait((body, action))
        response = await respond(text="counted", response_type="ephemeral", replace_original=False)
        responded.put_nowait(response.status_code)

    thread_ts, ts = await _post_buttons(fake)
    async with _connected(fake, app):
        envelope = await fake.click_button(BOB_ID, ts, "answer_yes")
        ack = await fake.wait_ack(envelope["envelope_id"], ACK_DEADLINE_S)
        body, action = await _within(clicks.get())
        call = await _within(fake.next_call(RESPONSE_URL))
        status = await _within(responded.get())

    assert (envelope["type"], envelope["accepts_response_payload"]) == (INTERACTIVE, False)
    assert (ack.payload, ack.delivery) == (None, 1)
    assert body["type"] == "block_actions"
    assert (body["user"]["id"], body["user"]["username"]) == (BOB_ID, "bob")
    assert body["channel"]["id"] == CHANNEL_ID
    assert body["container"] == {
        "type": "message",
        "message_ts": ts,
        "channel_id": CHANNEL_ID,
        "is_ephemeral": False,
        "thread_ts": thread_ts,
    }
    assert (body["message"]["ts"], body["message"]["blocks"]) == (ts, _BUTTONS)
    assert body["response_url"].startswith(fake.api_url.removesuffix("/api/") + "/actions/")
    assert (action["action_id"], action["block_id"], action["value"]) == (
        "answer_yes",
        "answers",
        "7",
    )
    assert (action["type"], action["style"]) == ("button", "primary")
    assert call.params == {
        "text": "counted",
        "response_type": "ephemeral",
        "replace_original": False,
    }
    assert status == 200
    (ephemeral,) = fake.ephemerals
    assert (ephemeral["user"], ephemeral["channel"], ephemeral["text"]) == (
        BOB_ID,
        CHANNEL_ID,
        "counted",
    )
    (reply,) = fake.messages(CHANNEL_ID, thread_ts=thread_ts)[1:]
    assert reply["text_history"] == ["May I?"], "an ephemeral answer leaves the message alone"


@pytest.mark.timeout(20)
async def test_a_clicks_response_url_can_replace_then_delete_the_clicked_message(
    fake: FakeSlack,
) -> None:
    thread_ts, ts = await _post_buttons(fake)
    envelope = await fake.click_button(ALICE_ID, ts, "answer_no")  # no socket: kept pending
    url = envelope["payload"]["response_url"]
    done = [{"type": "section", "text": {"type": "mrkdwn", "text": "Answered: no"}}]
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url, json={"replace_original": True, "text": "Answered", "blocks": done}
        ) as replaced:
            assert (replaced.status, await replaced.text()) == (200, "ok")
        (reply,) = fake.messages(CHANNEL_ID, thread_ts=thread_ts)[1:]
        assert (reply["text_history"], reply["blocks"]) == (["May I?", "Answered"], done)
        with pytest.raises(ValueError, match="no button"):
            await fake.click_button(ALICE_ID, ts, "answer_no")  # the buttons are gone
        async with session.post(url, json={"delete_original": True}) as deleted:
            assert deleted.status == 200
    assert [m["user"] for m in fake.messages(CHANNEL_ID, thread_ts=thread_ts)] == [ALICE_ID]
    assert fake.ephemerals == []


@pytest.mark.timeout(20)
async def test_chat_update_replaces_the_blocks_and_a_text_only_update_keeps_them(
    fake: FakeSlack,
) -> None:
    thread_ts, ts = await _post_buttons(fake)
    client = _client(fake)
    context = {"type": "context", "elements": [{"type": "mrkdwn", "text": "done"}]}
    closed: list[dict[str, Any]] = [_BUTTONS[0], context]
    updated = await client.chat_update(channel=CHANNEL_ID, ts=ts, text="May I? done", blocks=closed)
    await client.chat_update(channel=CHANNEL_ID, ts=ts, text="May I? done!")

    assert updated["message"]["blocks"] == closed
    (reply,) = fake.messages(CHANNEL_ID, thread_ts=thread_ts)[1:]
    assert reply["blocks"] == closed
    assert reply["text_history"] == ["May I?", "May I? done", "May I? done!"]
    update = next(c for c in fake.calls if c.method == "chat.update")
    assert update.params["blocks"] == closed  # sent as JSON, as slack-sdk does
    with pytest.raises(ValueError, match="no button"):
        await fake.click_button(BOB_ID, ts, "answer_yes")
    with pytest.raises(ValueError, match="no message"):
        await fake.click_button(BOB_ID, "1.000001", "answer_yes")
    with pytest.raises(ValueError, match="not a member"):
        await fake.click_button(BOT_USER_ID, ts, "answer_yes")


# -- Web API ----------------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_rate_limit_retry_handler_retries_a_429_and_the_message_arrives_once(
    fake: FakeSlack,
) -> None:
    client = _client(fake)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=1))
    fake.rate_limit("chat.postMessage", retry_after=1)

    posted = await _within(client.chat_postMessage(channel=CHANNEL_ID, text="once"))

    limited, accepted = (c for c in fake.calls if c.method == "chat.postMessage")
    assert (limited.status, limited.error) == (429, "ratelimited")
    assert (accepted.status, accepted.error) == (200, None)
    assert accepted.arrived_at_s - limited.arrived_at_s >= 1.0  # Retry-After honoured
    assert [m["text"] for m in fake.messages(CHANNEL_ID)] == ["once"]
    assert posted["ts"] == fake.messages(CHANNEL_ID)[0]["ts"]
    assert fake.rate_limited_count == 1


@pytest.mark.timeout(20)
async def test_without_the_retry_handler_a_429_raises(fake: FakeSlack) -> None:
    fake.rate_limit("chat.postMessage", retry_after=7)
    with pytest.raises(SlackApiError) as raised:
        await _client(fake).chat_postMessage(channel=CHANNEL_ID, text="lost")
    assert raised.value.response.status_code == 429
    assert raised.value.response.headers["Retry-After"] == "7"
    assert raised.value.response["error"] == "ratelimited"
    assert fake.messages(CHANNEL_ID) == []


@pytest.mark.timeout(20)
async def test_ratelimited_in_a_200_body_raises_and_is_not_retried(fake: FakeSlack) -> None:
    client = _client(fake)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=1))
    posted = await client.chat_postMessage(channel=CHANNEL_ID, text="draft")
    fake.rate_limit("chat.update", in_body=True)

    with pytest.raises(SlackApiError) as raised:
        await client.chat_update(channel=CHANNEL_ID, ts=posted["ts"], text="final")

    assert raised.value.response.status_code == 200
    assert raised.value.response["error"] == "ratelimited"
    assert "Retry-After" not in raised.value.response.headers
    assert _methods(fake).count("chat.update") == 1  # the retry handler only looks at 429s
    assert fake.messages(CHANNEL_ID)[0]["text_history"] == ["draft"]
    await client.chat_update(channel=CHANNEL_ID, ts=posted["ts"], text="final")
    assert fake.messages(CHANNEL_ID)[0]["text_history"] == ["draft", "final"]


@pytest.mark.timeout(20)
async def test_bad_missing_and_wrong_kind_of_token_are_refused(fake: FakeSlack) -> None:
    errors = []
    attempts: tuple[Callable[[], Awaitable[AsyncSlackResponse]], ...] = (
        lambda: _client(fake, "xoxb-not-the-token").auth_test(),
        lambda: AsyncWebClient(base_url=fake.api_url).auth_test(),
        lambda: _client(fake, APP_TOKEN).auth_test(),
        lambda: _client(fake).apps_connections_open(app_token=BOT_TOKEN),
    )
    for attempt in attempts:
        with pytest.raises(SlackApiError) as raised:
            await attempt()
        errors.append(raised.value.response["error"])
    assert errors == [
        "invalid_auth",
        "not_authed",
        "not_allowed_token_type",
        "not_allowed_token_type",
    ]


@pytest.mark.timeout(20)
async def test_bolt_with_a_bad_bot_token_acks_the_event_and_drops_it(fake: FakeSlack) -> None:
    bot = _Bot(fake, token="xoxb-revoked")
    async with _connected(fake, bot.app):
        envelope = await fake.send_mention(ALICE_ID, "anyone?")
        ack = await fake.wait_ack(envelope["envelope_id"], ACK_DEADLINE_S)
    # Bolt answers with its apology text and never runs the listener; Slack will not resend.
    assert ack.payload is not None
    assert "reinstall" in ack.payload["text"]
    assert bot.mentions.empty()
    (auth,) = (c for c in fake.calls if c.method == "auth.test")
    assert auth.error == "invalid_auth"


@pytest.mark.timeout(20)
async def test_auth_test_reports_identity_and_granted_scopes(fake: FakeSlack) -> None:
    fake.scopes.discard("reactions:write")
    client = _client(fake)
    identity = await client.auth_test()
    posted = await client.chat_postMessage(channel=CHANNEL_ID, text="hi")
    with pytest.raises(SlackApiError) as raised:
        await client.reactions_add(channel=CHANNEL_ID, timestamp=posted["ts"], name="eyes")

    assert (identity["user_id"], identity["bot_id"], identity["team_id"]) == (
        BOT_USER_ID,
        BOT_ID,
        TEAM_ID,
    )
    granted = set(identity.headers["x-oauth-scopes"].split(","))
    assert "chat:write" in granted
    assert "reactions:write" not in granted
    assert raised.value.response["error"] == "missing_scope"
    assert raised.value.response["needed"] == "reactions:write"


@pytest.mark.timeout(20)
async def test_reactions_and_edits_follow_slacks_rules(fake: FakeSlack) -> None:
    envelope = await fake.send_mention(ALICE_ID, "react to me")
    ts = envelope["payload"]["event"]["ts"]
    client = _client(fake)
    await client.reactions_add(channel=CHANNEL_ID, timestamp=ts, name="eyes")
    errors = []
    attempts: tuple[Callable[[], Awaitable[AsyncSlackResponse]], ...] = (
        lambda: client.reactions_add(channel=CHANNEL_ID, timestamp=ts, name="eyes"),
        lambda: client.chat_update(channel=CHANNEL_ID, ts=ts, text="hijacked"),
        lambda: client.chat_update(channel=CHANNEL_ID, ts="1.000001", text="nothing"),
        lambda: client.chat_postMessage(channel="C0NOWHERE", text="void"),
        lambda: client.chat_postMessage(channel=CHANNEL_ID, thread_ts="1.000001", text="orphan"),
    )
    for attempt in attempts:
        with pytest.raises(SlackApiError) as raised:
            await attempt()
        errors.append(raised.value.response["error"])
    # slack-sdk warns (UserWarning, slack_sdk.web.internal_utils) before sending empty text.
    with (
        pytest.warns(UserWarning, match="top-level `text` argument is missing"),
        pytest.raises(SlackApiError) as empty,
    ):
        await client.chat_postMessage(channel=CHANNEL_ID, text="")
    errors.append(empty.value.response["error"])

    assert errors == [
        "already_reacted",
        "cant_update_message",
        "message_not_found",
        "channel_not_found",
        "thread_not_found",
        "no_text",
    ]
    (message,) = fake.messages(CHANNEL_ID)
    assert message["reactions"] == {"eyes": [BOT_USER_ID]}
    assert message["text_history"] == [f"<@{BOT_USER_ID}> react to me"]


@pytest.mark.timeout(20)
async def test_text_over_the_limit_is_refused(fake: FakeSlack) -> None:
    client = _client(fake)
    fits = await client.chat_postMessage(channel=CHANNEL_ID, text="x" * MAX_TEXT_CHARS)
    with pytest.raises(SlackApiError) as raised:
        await client.chat_update(channel=CHANNEL_ID, ts=fits["ts"], text="x" * (MAX_TEXT_CHARS + 1))
    assert raised.value.response["error"] == "msg_too_long"
    assert len(fake.messages(CHANNEL_ID)[0]["text"]) == MAX_TEXT_CHARS


@pytest.mark.timeout(20)
async def test_ephemeral_and_lookups(fake: FakeSlack) -> None:
    client = _client(fake)
    ephemeral = await client.chat_postEphemeral(channel=CHANNEL_ID, user=BOB_ID, text="psst")
    channel = await client.conversations_info(channel=OTHER_CHANNEL_ID)
    user = await client.users_info(user=ALICE_ID)
    with pytest.raises(SlackApiError) as raised:
        await client.users_info(user="U0NOBODY00")

    assert fake.ephemerals[0]["message_ts"] == ephemeral["message_ts"]
    assert (fake.ephemerals[0]["user"], fake.ephemerals[0]["text"]) == (BOB_ID, "psst")
    assert (channel["channel"]["name"], channel["channel"]["is_member"]) == ("general", True)
    assert (user["user"]["name"], user["user"]["is_bot"]) == ("alice", False)
    assert raised.value.response["error"] == "user_not_found"
    assert fake.messages(CHANNEL_ID) == []


# -- files --------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_files_shared_with_a_mention_download_with_the_bot_token(fake: FakeSlack) -> None:
    bot = _Bot(fake)
    shared = [
        SharedFile("notes.txt", b"line one\nline two\n"),
        SharedFile("snippet.py", b"print('hi')\n", mimetype="text/x-python", is_snippet=True),
    ]
    async with _connected(fake, bot.app):
        await fake.send_mention(ALICE_ID, "read these", files=shared)
        event, _ = await bot.next_mention()

    notes, snippet = event["files"]
    assert (notes["name"], notes["mode"], notes["mimetype"]) == (
        "notes.txt",
        "hosted",
        "text/plain",
    )
    assert (snippet["mode"], snippet["preview"]) == ("snippet", "print('hi')")
    info = await _client(fake).files_info(file=notes["id"])
    assert info["file"]["size"] == len(shared[0].content)

    bearer = {"Authorization": f"Bearer {BOT_TOKEN}"}
    async with aiohttp.ClientSession() as session:
        downloaded = []
        for file in (notes, snippet):
            async with session.get(file["url_private_download"], headers=bearer) as response:
                assert response.status == 200
                downloaded.append(await response.read())
        # Without the token Slack answers 200 too, with its sign-in page: check the type.
        async with session.get(notes["url_private_download"]) as anonymous:
            assert anonymous.status == 200
            assert anonymous.content_type == "text/html"
            assert b"Sign in" in await anonymous.read()

    assert downloaded == [shared[0].content, shared[1].content]
    downloads = [c for c in fake.calls if c.method == FILE_DOWNLOAD]
    assert [(c.token, c.status) for c in downloads] == [(BOT_TOKEN, 200)] * 2 + [(None, 302)]
