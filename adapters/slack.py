"""The Slack bridge over Socket Mode: app_mention and /concordia in, answers into the thread.

Only this module imports slack_bolt and slack_sdk. Socket Mode because the host usually sits
behind NAT with no public URL. The app runs with ``process_before_response``: bolt acks an
event only after our listener returns, and the listener returns once the prompt is in the
store, so an ack never covers a prompt a crash could lose (Slack does not resend acked
events). Everything posted is escaped (``&``, ``<``, ``>``), which also disarms
``<!channel>``, ``<@U…>`` and ``<#C…>`` written by Claude; links are never unfurled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, assert_never

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.base import AdapterError
from bot.config import SlackSettings
from bot.model import Accepted, Author, Command, Prompt, Rejected
from bot.output import Outbox, ThreadRelay, redeliver
from bot.party import Party

__all__ = ["PLATFORM", "SlackAdapter", "SlackSink", "escape"]

log = logging.getLogger(__name__)

PLATFORM = "slack"
_QUEUED = "hourglass_flowing_sand"
_DEFAULT_RETRY_AFTER_S = 1.0
_MEMBER_HINT = (
    "You have not joined this party yet, so your mention was not queued. "
    "Ask the host for the invite token and run `/concordia join <token>`."
)
_TEXT_FILETYPES = frozenset(
    {"text", "markdown", "python", "javascript", "json", "yaml", "diff", "shell"}
)


def escape(text: str) -> str:
    """Slack's required escaping; it also makes mention syntax inert."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _adapter_error(exc: SlackApiError) -> AdapterError:
    response = exc.response
    error = str(response.get("error", "")) if response is not None else ""
    status = getattr(response, "status_code", 0)
    if error == "ratelimited" or status == 429:
        # chat.update can answer ratelimited inside an HTTP 200 body: a 429 all the same.
        header = (getattr(response, "headers", None) or {}).get("Retry-After")
        retry_after = float(header) if header else _DEFAULT_RETRY_AFTER_S
        return AdapterError(f"Slack rate limit ({error or status})", retry_after=retry_after)
    retryable = status >= 500 or error in {"internal_error", "fatal_error", "service_unavailable"}
    return AdapterError(f"Slack refused: {error or status}", retryable=retryable)


class SlackSink:
    """Posts and updates for the relays. A thread is ``"C"`` or ``"C/TS"`` (a reply thread)."""

    def __init__(self, client: AsyncWebClient, *, max_message_chars: int, edit_interval_s: float):
        self._client = client
        self._max = max_message_chars
        self._interval = edit_interval_s
        self._last_post: dict[str, float] = {}

    @property
    def max_message_chars(self) -> int:
        return self._max

    @property
    def edit_interval_s(self) -> float:
        return self._interval

    async def post(self, thread: str, text: str) -> str:
        channel, _, thread_ts = thread.partition("/")
        # chat.postMessage allows about one message a second per channel: a long reply's
        # finished messages are spaced like edits instead of arriving in one burst.
        wait_s = self._last_post.get(channel, -self._interval) + self._interval - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)  # pacing: Slack's per-channel posting rate
        self._last_post[channel] = time.monotonic()
        try:
            response = await self._client.chat_postMessage(
                channel=channel,
                thread_ts=thread_ts or None,
                text=escape(text),
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as exc:
            raise _adapter_error(exc) from exc
        return f"{response['channel']}:{response['ts']}"

    async def edit(self, ref: str, text: str) -> None:
        channel, ts = ref.split(":", 1)
        try:
            await self._client.chat_update(channel=channel, ts=ts, text=escape(text))
        except SlackApiError as exc:
            raise _adapter_error(exc) from exc


class SlackAdapter:
    """Serves ``channels`` (channel id → its party) over Socket Mode."""

    name = PLATFORM

    def __init__(
        self,
        settings: SlackSettings,
        channels: Mapping[str, Party],
        outbox: Outbox,
        *,
        bot_token: str,
        app_token: str,
    ):
        self._settings = settings
        self._channels = dict(channels)
        self._outbox = outbox
        self._client = AsyncWebClient(token=bot_token, base_url=settings.api_url)
        self._app = AsyncApp(client=self._client, process_before_response=True)
        self._handler = AsyncSocketModeHandler(self._app, app_token)
        self._bot_user_id = ""
        self._relays: list[ThreadRelay] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._hinted: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._app.event("app_mention")(self._on_mention)
        self._app.command("/concordia")(self._on_command)

    async def start(self) -> None:
        try:
            auth = await self._client.auth_test()
        except SlackApiError as exc:
            raise AdapterError(
                f"Slack refused the bot token in ${self._settings.bot_token_env} "
                f"({exc.response.get('error')}): reinstall the app and export the xoxb- token",
                retryable=False,
            ) from exc
        self._bot_user_id = str(auth["user_id"])
        sink = SlackSink(
            self._client,
            max_message_chars=self._settings.max_message_chars,
            edit_interval_s=self._settings.edit_interval_s,
        )
        finished = await redeliver(sink, self._outbox, PLATFORM)
        if finished:
            log.info("finished %d Slack messages cut off by a restart", finished)
        homes: dict[str, str] = {}
        for channel, party in self._channels.items():
            homes.setdefault(party.name, channel)
        for party in {p.name: p for p in self._channels.values()}.values():
            relay = ThreadRelay(
                sink, self._outbox, platform=PLATFORM, home_thread=homes[party.name]
            )
            await relay.__aenter__()
            self._relays.append(relay)
            self._unsubscribe.append(party.subscribe(relay))
        try:
            await self._handler.connect_async()
        except SlackApiError as exc:
            raise AdapterError(
                f"Slack refused the app token in ${self._settings.app_token_env} "
                f"({exc.response.get('error')}): Socket Mode needs an app-level xapp- token with "
                "connections:write",
                retryable=False,
            ) from exc

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        with contextlib.suppress(Exception):
            await self._handler.close_async()
        for relay in self._relays:
            with contextlib.suppress(Exception):
                await relay.stop()
        self._relays.clear()
        for task in list(self._background):
            task.cancel()

    # -- inbound ---------------------------------------------------------------------

    async def _on_mention(self, event: dict[str, Any]) -> None:
        """Runs before bolt acks the event: store the prompt, leave the rest to a task."""
        channel = str(event.get("channel", ""))
        party = self._channels.get(channel)
        user = str(event.get("user", ""))
        if party is None or not user or user == self._bot_user_id:
            return
        text = re.sub(
            rf"<@{re.escape(self._bot_user_id)}(\|[^>]*)?>", "", str(event.get("text", ""))
        ).strip()
        text = await self._with_files(text, event.get("files") or [], party)
        ts = str(event.get("ts", ""))
        prompt = Prompt(
            f"{PLATFORM}:{channel}:{ts}",
            Author(PLATFORM, user, user),
            text,
            thread=f"{channel}/{event.get('thread_ts') or ts}",
        )
        submission = await party.submit(prompt)
        self._in_background(self._acknowledge(party, prompt, submission, channel, ts))

    async def _acknowledge(
        self, party: Party, prompt: Prompt, submission: Accepted | Rejected, channel: str, ts: str
    ) -> None:
        try:
            match submission:
                case Accepted(is_duplicate=False):
                    await self._client.reactions_add(channel=channel, timestamp=ts, name=_QUEUED)
                case Accepted():
                    pass  # a redelivered event: already queued and marked
                case Rejected() if party.role_of(prompt.author) is None:
                    if prompt.author.user_id not in self._hinted:
                        self._hinted.add(prompt.author.user_id)
                        await self._client.chat_postEphemeral(
                            channel=channel, user=prompt.author.user_id, text=_MEMBER_HINT
                        )
                case Rejected(reason=reason):
                    await self._client.chat_postEphemeral(
                        channel=channel,
                        user=prompt.author.user_id,
                        text=escape(f"Not queued: {reason}"),
                    )
                case _:
                    assert_never(submission)
        except SlackApiError:
            log.warning("could not acknowledge a prompt on Slack", exc_info=True)

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """The ack waits for our listener: work that may be slow (a rate-limited reaction)
        runs after it, kept referenced and cancelled on stop."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _with_files(self, text: str, files: list[dict[str, Any]], party: Party) -> str:
        """Text snippets and files are read into the prompt within the party's limit;
        anything else is named."""
        budget = party.max_prompt_chars - len(text)
        parts = [text] if text else []
        for shared in files:
            name = str(shared.get("name") or shared.get("title") or "file")
            size = int(shared.get("size") or 0)
            url = shared.get("url_private_download") or shared.get("url_private")
            is_text = (
                str(shared.get("mimetype", "")).startswith("text/")
                or shared.get("filetype") in _TEXT_FILETYPES
            )
            if is_text and url and size <= budget * 4:
                body = await self._download(str(url))
                if body is not None and len(body) <= budget:
                    parts.append(f"--- {name} ---\n{body}")
                    budget -= len(body)
                    continue
            kind = shared.get("mimetype") or "unknown type"
            parts.append(f"[file {name} ({kind}, {size:,} bytes) not included]")
        return "\n\n".join(parts)

    async def _download(self, url: str) -> str | None:
        """A file shared in Slack, fetched with the bot token (files are private)."""
        headers = {"Authorization": f"Bearer {self._client.token}"}
        timeout = aiohttp.ClientTimeout(total=self._settings.download_timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, headers=headers) as response,
            ):
                response.raise_for_status()
                if response.history:
                    # Slack answers a file it will not give us with a redirect to a sign-in
                    # page (200, HTML), not an error: that page is not the file.
                    log.warning("Slack redirected a file download (missing files:read?)")
                    return None
                data = await response.read()
            return data.decode("utf-8")
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            log.warning("could not read a file shared with a mention", exc_info=True)
            return None

    async def _on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        await ack()
        channel = str(command.get("channel_id", ""))
        party = self._channels.get(channel)
        if party is None:
            await respond(
                text="This channel is not served by Concordia.", response_type="ephemeral"
            )
            return
        name, _, args = str(command.get("text", "")).strip().partition(" ")
        author = Author(
            PLATFORM, str(command.get("user_id", "")), str(command.get("user_name", ""))
        )
        public = False
        if name == "join":
            role = await party.join(args.strip(), author)
            text = (
                f"Welcome to party {party.name} ({role.value}). Mention me with a prompt."
                if role
                else "That invite token was refused."
            )
        else:
            result = await party.command(Command(name or "status", args, author, channel))
            text, public = result.text, result.public
        await respond(
            text=escape(text),
            response_type="in_channel" if public else "ephemeral",
            unfurl_links=False,
            unfurl_media=False,
        )


# What the bridge calls: mentions, posts and updates, reactions, /concordia, shared files.
REQUIRED_SCOPES = ("app_mentions:read", "chat:write", "reactions:write", "commands", "files:read")


async def diagnose(settings: SlackSettings, bot_token: str, app_token: str) -> list[str]:
    """What would stop the bridge, each with its fix (for `concordia doctor`); [] if nothing."""
    problems: list[str] = []
    client = AsyncWebClient(token=bot_token, base_url=settings.api_url)
    try:
        auth = await client.auth_test()
    except SlackApiError as exc:
        return [
            f"Slack refused the bot token in ${settings.bot_token_env} "
            f"({exc.response.get('error')}): reinstall the app and export its xoxb- token"
        ]
    granted = {s.strip() for s in str(auth.headers.get("x-oauth-scopes", "")).split(",")}
    missing = [scope for scope in REQUIRED_SCOPES if scope not in granted]
    if missing:
        problems.append(
            f"the bot token lacks the scopes {', '.join(missing)}: add them under OAuth & "
            "Permissions and reinstall the app"
        )
    try:
        await client.apps_connections_open(app_token=app_token)
    except SlackApiError as exc:
        problems.append(
            f"Slack refused the app token in ${settings.app_token_env} "
            f"({exc.response.get('error')}): Socket Mode needs an app-level xapp- token with "
            "connections:write"
        )
    return problems
