"""Fake Slack (Web API and Socket Mode) on 127.0.0.1 that the real slack-sdk / slack-bolt talk to.

Invariant: every envelope a test control creates is delivered at least once (on the newest
live socket, or on the next one to connect), and every ack the client sends is recorded with
the delivery it answers, so a test can tell what was acked, when, and how often.

The far end is one workspace (`TEAM_ID`) with one app (`APP_ID`), its bot user
(`BOT_USER_ID`, bot id `BOT_ID`), two members (`ALICE_ID`, `BOB_ID`) and two public channels
the bot is in (`CHANNEL_ID`, `OTHER_CHANNEL_ID`). Point the real clients at it with::

    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
    app = AsyncApp(client=client)
    handler = AsyncSocketModeHandler(app, APP_TOKEN)  # dials what apps.connections.open says

Behaviour copied from Slack, because a client that gets it wrong should fail here too:

- Web API calls are ``GET``/``POST {api_url}{method}`` with form, query or JSON arguments.
  Replies are HTTP 200 with ``Content-Type: application/json`` exactly, and errors are
  ``{"ok": false, "error": …}`` in a 200 body: ``not_authed`` (no token), ``invalid_auth``
  (unknown token), ``not_allowed_token_type`` (an app token on a bot method or the reverse),
  ``missing_scope`` (with ``needed`` and ``provided``), ``unknown_method``. Replies to bot
  token calls carry ``x-oauth-scopes`` (the granted ``scopes``) and ``x-accepted-oauth-scopes``.
- Text over 40,000 characters is refused with ``msg_too_long`` (Slack documents that it
  truncates such text; the fake refuses it so an overflowing client fails loudly). A message
  with neither text nor blocks is ``no_text``; more than 50 blocks is ``invalid_blocks``.
- ``thread_ts`` naming a reply resolves to its parent thread, as on Slack; one naming no
  message in the channel is refused with ``thread_not_found`` (Slack does not document that
  case; the fake refuses it so a wrong ts fails loudly).
- Only the bot's own messages can be edited (``cant_update_message``); a second identical
  reaction is ``already_reacted``.
- ``apps.connections.open`` needs the app token and hands out a single-use
  ``ws://…/link/?ticket=N`` URL; a reused or unknown ticket is refused (HTTP 401) at upgrade.
- The socket greets with ``hello``, answers pings (aiohttp autoping echoes the
  ``sdk-ping-pong:<ts>`` payload) and expects ``{"envelope_id", "payload"?}`` acks.
  ``events_api`` envelopes carry ``retry_attempt: 0, retry_reason: ""`` on first delivery, as
  Slack sends them (bolt turns that into the header ``x-slack-retry-num: 0``, so "the header
  is present" does not mean "this is a retry").
- A ``response_url`` accepts up to 5 posts within 30 minutes; a ``trigger_id`` opens one view
  within 3 s.
- File URLs (``url_private``, ``url_private_download``) need
  ``Authorization: Bearer BOT_TOKEN`` and the ``files:read`` scope; without them Slack (and
  the fake) redirects to an HTML sign-in page that answers 200, not an error.
- A button click (`click_button`) is an ``interactive`` envelope with a ``block_actions``
  payload, sent only for a button the bot's message shows now. Its ``response_url`` posts an
  ephemeral message to the clicker (the default) or, with ``response_type: "in_channel"``, a
  message in the channel; ``replace_original: true`` replaces the clicked message and
  ``delete_original: true`` deletes it. A response lands in a thread only when it names one
  (``thread_ts``): answers through a response_url do not follow the clicked message into
  its thread (slackapi/bolt-js#963), so the fake does not guess one.
- Messages the bot posts are not echoed back as events: the app subscribes to
  ``app_mention`` only, which Slack does not send for the bot's own posts.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import itertools
import json
import logging
import mimetypes
import re
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "ACK_DEADLINE_S",
    "ALICE_ID",
    "APP_ID",
    "APP_TOKEN",
    "BOB_ID",
    "BOT_ID",
    "BOT_TOKEN",
    "BOT_USER_ID",
    "CHANNEL_ID",
    "DEFAULT_SCOPES",
    "FILE_DOWNLOAD",
    "INTERACTIVE",
    "MAX_TEXT_CHARS",
    "OTHER_CHANNEL_ID",
    "RESPONSE_URL",
    "SLASH_COMMAND",
    "TEAM_ID",
    "Ack",
    "FakeSlack",
    "RecordedCall",
    "SharedFile",
]

log = logging.getLogger(__name__)

# Known ids, shaped like Slack's (a type letter and upper-case alphanumerics).
TEAM_ID = "T0CONCORD1"
APP_ID = "A0CONCORD01"
BOT_USER_ID = "U0CONCBOT1"
BOT_ID = "B0CONCBOT1"
ALICE_ID = "U0ALICE001"
BOB_ID = "U0BOB00001"
CHANNEL_ID = "C0CONCORD1"
OTHER_CHANNEL_ID = "C0GENERAL1"
# Shaped like real tokens; they only open this fake.
BOT_TOKEN = "xoxb-1000000000001-2000000000001-ConcordiaFakeBotToken0"
APP_TOKEN = "xapp-1-A0CONCORD01-3000000000001-concordiafakeapptoken0000000000000000"
SLASH_COMMAND = "/concordia"
INTERACTIVE = "interactive"  # the envelope type of a button click

DEFAULT_SCOPES = frozenset(
    {
        "app_mentions:read",
        "channels:history",
        "channels:read",
        "chat:write",
        "commands",
        "files:read",
        "reactions:write",
        "users:read",
    }
)

# Pseudo method names under which non-Web-API requests land in `calls`.
RESPONSE_URL = "response_url"
FILE_DOWNLOAD = "file_download"

MAX_TEXT_CHARS = 40_000
ACK_DEADLINE_S = 3.0  # Slack's: an envelope not acked within it counts as failed
_MAX_BLOCKS = 50
_MAX_EVENT_RETRIES = 3
_RESPONSE_URL_USES = 5
_RESPONSE_URL_TTL_S = 30 * 60.0
_TRIGGER_TTL_S = 3.0

_TEAM_NAME = "Concordia Fake"
_TEAM_DOMAIN = "concordia-fake"
_BOT_NAME = "concordia"
_VERIFICATION_TOKEN = "fakeVerificationToken000"  # deprecated, but Slack still sends it
_CREATED = 1_706_270_400  # 2024-01-26, when the fake workspace was "made"

_API_PREFIX = "/api/"
_LINK_PATH = "/link/"
_COMMANDS_PREFIX = "/commands"
_ACTIONS_PREFIX = "/actions"
_FILES_PREFIX = "/files-pri"
_SIGN_IN_PATH = "/signin"

_WS_CLOSE_TIMEOUT_S = 2.0
_SHUTDOWN_TIMEOUT_S = 1.0
_LISTEN_BACKLOG = 128
_CLIENT_MAX_BYTES = 10 * 1024 * 1024

_USER_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_REACTION_NAME = re.compile(r"^[a-z0-9_+'-]+(::skin-tone-[2-6])?$")
_SIGN_IN_PAGE = (
    b"<!DOCTYPE html><html><head><title>Sign in | Slack</title></head>"
    b"<body>Sign in to Concordia Fake</body></html>"
)

_Json = dict[str, Any]


class _Token(enum.Enum):
    BOT = "bot"
    APP = "app"


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One request as the fake received it, and how it was answered.

    ``method`` is the Web API method (``chat.postMessage``), or `RESPONSE_URL` for a post to a
    slash command's or a button click's ``response_url``, or `FILE_DOWNLOAD` for a file
    download. ``params`` is the query, form and JSON arguments merged (JSON wins); ``token`` is
    the bearer token (or the ``token`` argument), None when there was none. ``error`` is the
    ``error`` the reply carried (``ratelimited``, ``invalid_auth``…), None for a success.
    ``arrived_at_s`` is the ``time.monotonic()`` of arrival, so a test can check the pacing
    after a 429.
    """

    method: str
    params: Mapping[str, Any]
    headers: CIMultiDictProxy[str]
    token: str | None
    status: int
    error: str | None
    arrived_at_s: float


@dataclass(frozen=True, slots=True)
class Ack:
    """One ack frame the client sent: ``{"envelope_id", "payload"?}``.

    ``delivery`` is how many times the envelope had been sent when the ack arrived (1 for the
    first delivery) and ``elapsed_s`` the time since that latest send; both are 0 for an
    envelope the fake never sent. ``connection_id`` is the socket it came on and
    ``received_at_s`` the ``time.monotonic()`` of arrival.
    """

    envelope_id: str
    payload: _Json | None
    connection_id: int
    delivery: int
    elapsed_s: float
    received_at_s: float


@dataclass(frozen=True, slots=True)
class SharedFile:
    """A file shared with a mention. ``is_snippet`` makes it a text snippet (mode "snippet")
    instead of an uploaded file; ``mimetype`` defaults to a guess from the name."""

    name: str
    content: bytes
    mimetype: str | None = None
    is_snippet: bool = False


@dataclass(slots=True, eq=False)
class _Connection:
    connection_id: int
    ws: web.WebSocketResponse
    request: web.Request
    is_ready: bool = False  # hello sent
    is_retired: bool = False  # refresh requested, dropped or failed: the fake sends no more

    @property
    def is_live(self) -> bool:
        return self.is_ready and not self.ws.closed and not self.is_retired


@dataclass(slots=True)
class _Delivery:
    count: int
    sent_at_s: float


@dataclass(slots=True, eq=False)
class _Message:
    channel: str
    ts: str
    user: str
    text: str
    thread_ts: str | None  # the parent's ts for a reply; None at top level
    blocks: list[Any] | None = None
    options: _Json = field(default_factory=dict)  # unfurl_links, unfurl_media, mrkdwn
    history: list[str] = field(default_factory=list)
    reactions: dict[str, list[str]] = field(default_factory=dict)
    reply_ts: list[str] = field(default_factory=list)
    files: list[_Json] = field(default_factory=list)

    @property
    def is_bot(self) -> bool:
        return self.user == BOT_USER_ID


@dataclass(slots=True)
class _RateLimitRule:
    method: str
    retry_after: int
    remaining: int
    is_in_body: bool


@dataclass(slots=True)
class _ResponseUrl:
    channel: str
    user: str
    created_s: float
    message_ts: str | None = None  # the clicked message, for a button's response_url
    uses: int = 0


@dataclass(slots=True)
class _Trigger:
    created_s: float
    is_used: bool = False


@dataclass(slots=True)
class _StoredFile:
    info: _Json
    content: bytes


class _SlackError(Exception):
    """A Web API error reply: ``{"ok": false, "error": error, **extra}``."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


_Handler = Callable[[_Json], Awaitable[_Json]]


@dataclass(frozen=True, slots=True)
class _Method:
    handler: _Handler
    token: _Token
    scope: str | None  # the scope the method needs, None for none


class _Timestamps:
    """Slack message timestamps ("seconds.micros"), strictly increasing within the fake."""

    def __init__(self) -> None:
        self._last_us = 0

    def next(self) -> str:
        self._last_us = max(int(time.time() * 1_000_000), self._last_us + 1)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"


def _json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    # Exactly "application/json", as Slack sends it.
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(status=status, body=json.dumps(body).encode(), headers=all_headers)


def _as_bool(value: Any) -> bool | None:
    """A boolean argument as JSON (true) or a form ("true", "1") sends it; None if absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true")


def _as_json_list(value: Any, error: str) -> list[Any] | None:
    """A list argument sent as JSON or as a JSON string in a form; _SlackError if neither."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _SlackError(error) from None
    if not isinstance(value, list):
        raise _SlackError(error)
    return value


def _rich_text(text: str) -> list[_Json]:
    """The rich_text block a Slack client attaches to a typed message."""
    elements: list[_Json] = []
    position = 0
    for match in _USER_MENTION.finditer(text):
        if match.start() > position:
            elements.append({"type": "text", "text": text[position : match.start()]})
        elements.append({"type": "user", "user_id": match.group(1)})
        position = match.end()
    if position < len(text):
        elements.append({"type": "text", "text": text[position:]})
    block_id = secrets.token_hex(3)
    section = {"type": "rich_text_section", "elements": elements}
    return [{"type": "rich_text", "block_id": block_id, "elements": [section]}]


def _find_button(blocks: Iterable[Any], action_id: str) -> tuple[str, _Json] | None:
    """The ``(block_id, button)`` with ``action_id`` in an actions block or a section's
    accessory, or None. A block without a block_id gets the one Slack would make up."""
    for block in blocks:
        if not isinstance(block, dict):
            continue
        elements = list(block.get("elements") or []) if block.get("type") == "actions" else []
        if block.get("type") == "section" and isinstance(block.get("accessory"), dict):
            elements.append(block["accessory"])
        for element in elements:
            if (
                isinstance(element, dict)
                and element.get("type") == "button"
                and element.get("action_id") == action_id
            ):
                return str(block.get("block_id") or secrets.token_hex(3)), element
    return None


def _user(user_id: str, name: str, *, is_admin: bool = False, is_bot: bool = False) -> _Json:
    real_name = name.title()
    profile: _Json = {
        "real_name": real_name,
        "display_name": "" if is_bot else name,
        "real_name_normalized": real_name,
        "display_name_normalized": "" if is_bot else name,
        "team": TEAM_ID,
    }
    if is_bot:
        profile |= {"bot_id": BOT_ID, "api_app_id": APP_ID, "always_active": True}
    return {
        "id": user_id,
        "team_id": TEAM_ID,
        "name": name,
        "deleted": False,
        "color": "9f69e7",
        "real_name": real_name,
        "tz": "Europe/London",
        "tz_label": "Greenwich Mean Time",
        "tz_offset": 0,
        "profile": profile,
        "is_admin": is_admin,
        "is_owner": is_admin,
        "is_primary_owner": is_admin,
        "is_restricted": False,
        "is_ultra_restricted": False,
        "is_bot": is_bot,
        "is_app_user": False,
        "updated": _CREATED,
        "is_email_confirmed": not is_bot,
        "who_can_share_contact_card": "EVERYONE",
    }


def _channel(channel_id: str, name: str, *, is_general: bool) -> _Json:
    return {
        "id": channel_id,
        "name": name,
        "is_channel": True,
        "is_group": False,
        "is_im": False,
        "is_mpim": False,
        "is_private": False,
        "created": _CREATED,
        "is_archived": False,
        "is_general": is_general,
        "unlinked": 0,
        "name_normalized": name,
        "is_shared": False,
        "is_org_shared": False,
        "is_pending_ext_shared": False,
        "pending_shared": [],
        "context_team_id": TEAM_ID,
        "updated": _CREATED * 1000,
        "parent_conversation": None,
        "creator": ALICE_ID,
        "is_ext_shared": False,
        "shared_team_ids": [TEAM_ID],
        "pending_connected_team_ids": [],
        "is_member": True,
        "last_read": "0000000000.000000",
        "topic": {"value": "", "creator": "", "last_set": 0},
        "purpose": {"value": "", "creator": "", "last_set": 0},
        "previous_names": [],
    }


class FakeSlack:
    """Slack's Web API and Socket Mode on ``127.0.0.1`` (free port) for the life of ``async with``.

    Recording: every Web API call, ``response_url`` post and file download lands in ``calls``
    and ``requests`` (in arrival order, with the status and error it got, rate limits
    included); every ack lands in ``ack_log`` and ``acks``; other frames the client sends land
    in ``other_frames``. The socket ids the fake greeted with ``hello`` land in ``hellos``.
    ``rate_limited_count`` counts rate-limited answers served (429 and in-body).

    ``scopes`` is the set of scopes granted to the bot token; a test may remove one (a method
    needing it then answers ``missing_scope``). With ``retry_unacked_after_s`` set, an
    ``events_api`` envelope not acked within that time is resent like Slack does (same
    ``envelope_id`` and ``event_id``, ``retry_attempt`` + 1, ``retry_reason: "timeout"``, at
    most 3 retries); None (the default) never resends on its own.
    """

    def __init__(
        self,
        *,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        retry_unacked_after_s: float | None = None,
    ) -> None:
        if retry_unacked_after_s is not None and retry_unacked_after_s <= 0:
            raise ValueError(f"retry_unacked_after_s must be > 0, got {retry_unacked_after_s}")
        self.scopes: set[str] = set(scopes)
        self._retry_unacked_after_s = retry_unacked_after_s

        self.calls: list[RecordedCall] = []
        self.requests: asyncio.Queue[RecordedCall] = asyncio.Queue()
        self.ack_log: list[Ack] = []
        self.acks: asyncio.Queue[Ack] = asyncio.Queue()
        self.other_frames: list[Any] = []
        self.hellos: asyncio.Queue[int] = asyncio.Queue()
        self.ephemerals: list[_Json] = []
        self.views: list[_Json] = []
        self.rate_limited_count = 0

        self._runner: web.AppRunner | None = None
        self._listen_sock: socket.socket | None = None
        self._setups: set[asyncio.Task[None]] = set()  # accepted connections being set up
        self._origin: str | None = None
        self._is_used = False
        self._methods = self._build_methods()
        self._rate_limit_rules: list[_RateLimitRule] = []

        self._ts = _Timestamps()
        self._ids = itertools.count(1)
        self._tickets: dict[str, bool] = {}  # ticket -> used
        self._connections: list[_Connection] = []
        self._pending: list[_Json] = []  # envelopes waiting for a live socket
        self._envelopes: set[str] = set()
        self._deliveries: dict[str, _Delivery] = {}
        self._ack_changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()

        self._users: dict[str, _Json] = {
            BOT_USER_ID: _user(BOT_USER_ID, _BOT_NAME, is_bot=True),
            ALICE_ID: _user(ALICE_ID, "alice", is_admin=True),
            BOB_ID: _user(BOB_ID, "bob"),
        }
        self._channels: dict[str, _Json] = {
            CHANNEL_ID: _channel(CHANNEL_ID, "concordia", is_general=False),
            OTHER_CHANNEL_ID: _channel(OTHER_CHANNEL_ID, "general", is_general=True),
        }
        self._messages: dict[tuple[str, str], _Message] = {}
        self._channel_ts: dict[str, list[str]] = {c: [] for c in self._channels}
        self._files: dict[str, _StoredFile] = {}
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._triggers: dict[str, _Trigger] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._is_used:
            raise RuntimeError("a FakeSlack cannot be started twice; make a new one")
        self._is_used = True
        app = web.Application(client_max_size=_CLIENT_MAX_BYTES)
        app.router.add_route("*", _API_PREFIX + "{method}", self._api)
        app.router.add_get(_LINK_PATH, self._link)
        app.router.add_post(_COMMANDS_PREFIX + "/{team}/{hook}/{secret}", self._response_url)
        app.router.add_post(_ACTIONS_PREFIX + "/{team}/{hook}/{secret}", self._response_url)
        app.router.add_get(_FILES_PREFIX + "/{team_file}/download/{name}", self._download)
        app.router.add_get(_FILES_PREFIX + "/{team_file}/{name}", self._download)
        app.router.add_get(_SIGN_IN_PATH, self._sign_in)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        self._runner = runner
        # Our own accept loop instead of web.TCPSite. slack-sdk's client redials while it
        # closes mid-reconnect; asyncio.Server (3.11) leaks a socket accepted just before it
        # closes, and aiohttp forgets one that arrives during its shutdown. Accepting here,
        # and finishing every accepted connection's setup before runner.cleanup(), means
        # every connection is one that aiohttp knows and closes.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind(("127.0.0.1", 0))
            sock.listen(_LISTEN_BACKLOG)
        except OSError:
            sock.close()
            await self.stop()
            raise
        self._listen_sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_connect, sock, runner)
        host, port = sock.getsockname()[:2]
        self._origin = f"{host}:{port}"
        log.debug("fake Slack listening on %s", self._origin)
        return self

    def _on_connect(self, sock: socket.socket, runner: web.AppRunner) -> None:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._set_up(conn, runner))
        self._setups.add(task)
        task.add_done_callback(self._setups.discard)

    async def _set_up(self, conn: socket.socket, runner: web.AppRunner) -> None:
        """Hand ``conn`` to aiohttp; returns once its handler has the connection."""
        try:
            if runner.server is None:
                raise ConnectionAbortedError("the fake is stopping")
            await asyncio.get_running_loop().connect_accepted_socket(runner.server, conn)
        except OSError:
            log.debug("a connection went away before it was set up", exc_info=True)
            conn.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting and resending, close every socket (1001) and connection; idempotent."""
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock, self._listen_sock = self._listen_sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        # Not cancelled: a setup cancelled before it starts would leak its socket.
        await asyncio.gather(*self._setups, return_exceptions=True)
        runner, self._runner = self._runner, None
        self._origin = None
        for conn in list(self._connections):
            await conn.ws.close(code=1001, message=b"going away")
        if runner is not None:
            await runner.cleanup()
            # Transports finish closing in call_soon callbacks; run them while the loop lives.
            await asyncio.sleep(0)

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:PORT/api/``, the ``base_url`` for ``AsyncWebClient``."""
        return f"http://{self._require_origin()}{_API_PREFIX}"

    def _require_origin(self) -> str:
        if self._origin is None:
            raise RuntimeError(
                "FakeSlack is not running; use it as `async with FakeSlack() as fake:`"
            )
        return self._origin

    # -- what tests read -------------------------------------------------------------------

    def messages(self, channel: str, thread_ts: str | None = None) -> list[_Json]:
        """Messages as they are now, oldest first; ValueError for an unknown channel.

        Without ``thread_ts``: the channel's top-level messages (``conversations.history``).
        With it: the thread, parent first (``conversations.replies``). Each is a copy with
        ``ts``, ``user``, ``text`` (current), ``text_history`` (every text it has had, oldest
        first), ``thread_ts`` (None at top level), ``blocks``, ``reactions`` (name -> users),
        ``reply_count``, ``files`` and, for the bot's posts, the ``unfurl_links``,
        ``unfurl_media`` and ``mrkdwn`` arguments as sent (None when not sent).
        """
        if channel not in self._channels:
            raise ValueError(f"the fake has no channel {channel!r}")
        if thread_ts is None:
            found = [self._messages[channel, ts] for ts in self._channel_ts[channel]]
            return [self._snapshot(m) for m in found if m.thread_ts is None]
        parent = self._messages.get((channel, thread_ts))
        if parent is None:
            raise ValueError(f"no message {thread_ts} in {channel}")
        thread = [parent] + [self._messages[channel, ts] for ts in parent.reply_ts]
        return [self._snapshot(m) for m in thread]

    async def next_call(self, method: str) -> RecordedCall:
        """Take calls from ``requests`` until one is to ``method``; consumes the others.

        ``calls`` keeps them all. Waits forever, so wrap it in ``asyncio.timeout``.
        ValueError for a method the fake does not serve.
        """
        self._check_method(method)
        while True:
            call = await self.requests.get()
            if call.method == method:
                return call

    async def next_connection(self) -> int:
        """Wait for the next socket the fake greets with ``hello``; return its id."""
        return await self.hellos.get()

    async def wait_ack(self, envelope_id: str, within_s: float) -> Ack:
        """The ack to the latest delivery of ``envelope_id``, waiting up to ``within_s``.

        ``Ack.elapsed_s`` is the time from that send to the ack. Raises TimeoutError when no
        such ack comes in time and ValueError for an envelope the fake never made. Safe to
        cancel; it consumes nothing (``acks`` is left as it is).
        """
        if envelope_id not in self._envelopes:
            raise ValueError(f"the fake sent no envelope {envelope_id!r}")
        async with asyncio.timeout(within_s), self._ack_changed:
            await self._ack_changed.wait_for(lambda: self._latest_ack(envelope_id) is not None)
        ack = self._latest_ack(envelope_id)
        assert ack is not None
        return ack

    # -- fault injection -------------------------------------------------------------------

    def rate_limit(
        self, method: str, *, retry_after: int = 1, count: int = 1, in_body: bool = False
    ) -> None:
        """Answer the next ``count`` calls of ``method`` as rate limited.

        By default with HTTP 429, a ``Retry-After: <retry_after>`` header (whole seconds, as
        Slack sends it; slack-sdk's retry handler parses it with ``int``) and the body
        ``{"ok": false, "error": "ratelimited"}``. With ``in_body`` the answer is HTTP 200 with
        that body and no ``Retry-After`` (Slack does this, e.g. for chat.update). Rules queue
        up in call order. ValueError for a method the fake does not serve.
        """
        self._check_method(method)
        if retry_after < 0:
            raise ValueError(f"retry_after must be >= 0 whole seconds, got {retry_after}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self._rate_limit_rules.append(_RateLimitRule(method, retry_after, count, in_body))

    async def request_refresh(self) -> int:
        """Send ``{"type": "disconnect", "reason": "refresh_requested"}`` on the live socket.

        The fake sends nothing more on that socket; envelopes wait for the client to dial a
        new one (through apps.connections.open). Returns the old socket's id; await
        `next_connection` for the new one. RuntimeError when no socket is live.
        """
        conn = self._require_live()
        conn.is_retired = True
        frame = {
            "type": "disconnect",
            "reason": "refresh_requested",
            "debug_info": {"host": f"applink-fake-{conn.connection_id}"},
        }
        await conn.ws.send_str(json.dumps(frame))
        return conn.connection_id

    async def drop_socket(self) -> int:
        """Abort the live socket's TCP connection, with no close frame; return its id.

        Envelopes sent afterwards wait for the client to reconnect. RuntimeError when no
        socket is live.
        """
        conn = self._require_live()
        conn.is_retired = True  # never send on it again
        transport = conn.request.transport
        if transport is not None:
            transport.abort()
        return conn.connection_id

    # -- events from users -----------------------------------------------------------------

    async def send_mention(
        self,
        user_id: str,
        text: str,
        *,
        channel: str = CHANNEL_ID,
        files: Sequence[SharedFile] = (),
        thread_ts: str | None = None,
        retry_num: int | None = None,
    ) -> _Json:
        """A member posts ``text`` mentioning the bot: store it and send an app_mention.

        The text starts with ``<@BOT_USER_ID> `` unless it already mentions the bot.
        ``thread_ts`` posts it in that thread; ``files`` are shared with it (their URLs serve
        the bytes to the bot token); ``retry_num`` sends it as that retry attempt (reason
        "timeout"). Returns the ``events_api`` envelope as sent; it goes out on the live socket
        or, if none is live, on the next one. ValueError for an unknown user, channel or
        thread.
        """
        if user_id not in self._users or user_id == BOT_USER_ID:
            raise ValueError(f"user_id {user_id!r} is not a member of the fake workspace")
        if channel not in self._channels:
            raise ValueError(f"the fake has no channel {channel!r}")
        if retry_num is not None and retry_num < 0:
            raise ValueError(f"retry_num must be >= 0, got {retry_num}")
        if f"<@{BOT_USER_ID}>" not in text:
            text = f"<@{BOT_USER_ID}> {text}"
        parent = None
        if thread_ts is not None:
            parent = self._thread_parent(channel, thread_ts)
            if parent is None:
                raise ValueError(f"no message {thread_ts} in {channel} to reply to")
        ts = self._ts.next()
        file_infos = [self._store_file(user_id, ts, shared) for shared in files]
        message = _Message(
            channel,
            ts,
            user_id,
            text,
            None if parent is None else parent.ts,
            blocks=_rich_text(text),
            history=[text],
            files=file_infos,
        )
        self._store_message(message, parent)
        event: _Json = {
            "client_msg_id": str(uuid.uuid4()),
            "type": "app_mention",
            "text": text,
            "user": user_id,
            "ts": ts,
            "blocks": message.blocks,
            "team": TEAM_ID,
            "channel": channel,
            "event_ts": ts,
        }
        if parent is not None:
            event |= {"thread_ts": parent.ts, "parent_user_id": parent.user}
        if file_infos:
            event |= {"files": copy.deepcopy(file_infos), "upload": False, "display_as_bot": False}
        event_id = f"Ev{next(self._ids):08d}FAKE"
        envelope: _Json = {
            "envelope_id": str(uuid.uuid4()),
            "payload": {
                "token": _VERIFICATION_TOKEN,
                "team_id": TEAM_ID,
                "context_team_id": TEAM_ID,
                "context_enterprise_id": None,
                "api_app_id": APP_ID,
                "event": event,
                "type": "event_callback",
                "event_id": event_id,
                "event_time": int(float(ts)),
                "authorizations": [
                    {
                        "enterprise_id": None,
                        "team_id": TEAM_ID,
                        "user_id": BOT_USER_ID,
                        "is_bot": True,
                        "is_enterprise_install": False,
                    }
                ],
                "is_ext_shared_channel": False,
                "event_context": f"4-app_mention-{TEAM_ID}-{channel}",
            },
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": retry_num or 0,
            "retry_reason": "timeout" if retry_num else "",
        }
        return await self._send_envelope(envelope)

    async def send_slash_command(
        self, user_id: str, text: str, *, channel: str = CHANNEL_ID
    ) -> _Json:
        """A member runs ``/concordia text``: send a ``slash_commands`` envelope; return it.

        Its ``response_url`` (5 posts within 30 min) and ``trigger_id`` (one views.open within
        3 s) point at the fake. ValueError for an unknown user or channel.
        """
        if user_id not in self._users or user_id == BOT_USER_ID:
            raise ValueError(f"user_id {user_id!r} is not a member of the fake workspace")
        if channel not in self._channels:
            raise ValueError(f"the fake has no channel {channel!r}")
        response_url, trigger_id = self._interaction_hooks(_COMMANDS_PREFIX, channel, user_id)
        envelope: _Json = {
            "envelope_id": str(uuid.uuid4()),
            "payload": {
                "token": _VERIFICATION_TOKEN,
                "team_id": TEAM_ID,
                "team_domain": _TEAM_DOMAIN,
                "channel_id": channel,
                "channel_name": self._channels[channel]["name"],
                "user_id": user_id,
                "user_name": self._users[user_id]["name"],
                "command": SLASH_COMMAND,
                "text": text,
                "api_app_id": APP_ID,
                "is_enterprise_install": "false",
                "response_url": response_url,
                "trigger_id": trigger_id,
            },
            "type": "slash_commands",
            "accepts_response_payload": True,
        }
        return await self._send_envelope(envelope)

    async def click_button(
        self, user_id: str, message_ts: str, action_id: str, *, channel: str = CHANNEL_ID
    ) -> _Json:
        """A member clicks the button ``action_id`` on the bot's message ``message_ts``: send an
        ``interactive`` envelope (``block_actions``) and return it.

        The action carries the button's own ``block_id``, ``value``, ``text`` and ``style``;
        ``message`` is the message as it is now. The ``response_url`` (5 posts within 30 min)
        and ``trigger_id`` point at the fake. Await `wait_ack` for the ack. ValueError for an
        unknown user, channel or message, or a button the message does not show (any more).
        """
        if user_id not in self._users or user_id == BOT_USER_ID:
            raise ValueError(f"user_id {user_id!r} is not a member of the fake workspace")
        if channel not in self._channels:
            raise ValueError(f"the fake has no channel {channel!r}")
        message = self._messages.get((channel, message_ts))
        if message is None:
            raise ValueError(f"no message {message_ts} in {channel}")
        found = _find_button(message.blocks or [], action_id)
        if found is None:
            raise ValueError(f"message {message_ts} shows no button {action_id!r}")
        block_id, button = found
        response_url, trigger_id = self._interaction_hooks(
            _ACTIONS_PREFIX, channel, user_id, message_ts
        )
        action: _Json = {
            "action_id": action_id,
            "block_id": block_id,
            "text": copy.deepcopy(button.get("text")),
            "value": button.get("value"),
            "type": "button",
            "action_ts": self._ts.next(),
        }
        if "style" in button:
            action["style"] = button["style"]
        container: _Json = {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        }
        if message.thread_ts is not None:
            container["thread_ts"] = message.thread_ts
        user = self._users[user_id]
        envelope: _Json = {
            "envelope_id": str(uuid.uuid4()),
            "payload": {
                "type": "block_actions",
                "user": {
                    "id": user_id,
                    "username": user["name"],
                    "name": user["name"],
                    "team_id": TEAM_ID,
                },
                "api_app_id": APP_ID,
                "token": _VERIFICATION_TOKEN,
                "container": container,
                "trigger_id": trigger_id,
                "team": {"id": TEAM_ID, "domain": _TEAM_DOMAIN},
                "enterprise": None,
                "is_enterprise_install": False,
                "channel": {"id": channel, "name": self._channels[channel]["name"]},
                "message": self._wire(message),
                "state": {"values": {}},
                "response_url": response_url,
                "actions": [action],
            },
            "type": INTERACTIVE,
            "accepts_response_payload": False,
        }
        return await self._send_envelope(envelope)

    def _interaction_hooks(
        self, prefix: str, channel: str, user_id: str, message_ts: str | None = None
    ) -> tuple[str, str]:
        """A fresh ``response_url`` and ``trigger_id`` for one interaction."""
        hook = f"{next(self._ids):013d}"
        secret = secrets.token_hex(12)
        response_url = f"http://{self._require_origin()}{prefix}/{TEAM_ID}/{hook}/{secret}"
        self._response_urls[response_url] = _ResponseUrl(
            channel, user_id, time.monotonic(), message_ts
        )
        trigger_id = f"{hook}.{next(self._ids):013d}.{secrets.token_hex(16)}"
        self._triggers[trigger_id] = _Trigger(time.monotonic())
        return response_url, trigger_id

    async def redeliver(self, envelope: _Json) -> _Json:
        """Send ``envelope`` again as Slack's retry: same ``envelope_id`` (and ``event_id``),
        ``retry_attempt`` + 1, ``retry_reason: "timeout"``. Returns the envelope as resent.

        ValueError for an envelope the fake did not make.
        """
        if envelope.get("envelope_id") not in self._envelopes:
            raise ValueError(
                "redeliver takes an envelope returned by send_mention, send_slash_command "
                "or click_button"
            )
        resent = copy.deepcopy(envelope)
        if resent["type"] == "events_api":
            resent["retry_attempt"] = int(resent.get("retry_attempt") or 0) + 1
            resent["retry_reason"] = "timeout"
        return await self._send_envelope(resent)

    # -- Socket Mode -----------------------------------------------------------------------

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if self._tickets.get(ticket, True):  # unknown (None -> True) or already used
            return _json_response({"ok": False, "error": "invalid_ticket"}, status=401)
        self._tickets[ticket] = True
        ws = web.WebSocketResponse(autoping=True, timeout=_WS_CLOSE_TIMEOUT_S)
        await ws.prepare(request)
        conn = _Connection(next(self._ids), ws, request)
        self._connections.append(conn)
        log.debug("socket %d opened with ticket %s", conn.connection_id, ticket)
        try:
            live = sum(1 for c in self._connections if c.is_live) + 1
            hello = {
                "type": "hello",
                "num_connections": live,
                "debug_info": {
                    "host": f"applink-fake-{conn.connection_id}",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": APP_ID},
            }
            await ws.send_str(json.dumps(hello))
            conn.is_ready = True
            self.hellos.put_nowait(conn.connection_id)
            pending, self._pending = self._pending, []
            for envelope in pending:
                await self._send_envelope(envelope)
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_frame(conn, msg.data)
                else:
                    self.other_frames.append(msg.data)
        finally:
            self._connections.remove(conn)
            log.debug("socket %d closed (code %s)", conn.connection_id, ws.close_code)
        return ws

    async def _on_frame(self, conn: _Connection, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("envelope_id"), str):
            self.other_frames.append(data)
            return
        envelope_id = frame["envelope_id"]
        delivery = self._deliveries.get(envelope_id)
        payload = frame.get("payload")
        now = time.monotonic()
        ack = Ack(
            envelope_id=envelope_id,
            payload=payload if isinstance(payload, dict) else None,
            connection_id=conn.connection_id,
            delivery=0 if delivery is None else delivery.count,
            elapsed_s=0.0 if delivery is None else now - delivery.sent_at_s,
            received_at_s=now,
        )
        async with self._ack_changed:
            self.ack_log.append(ack)
            self.acks.put_nowait(ack)
            self._ack_changed.notify_all()

    def _latest_ack(self, envelope_id: str) -> Ack | None:
        delivery = self._deliveries.get(envelope_id)
        if delivery is None:
            return None
        return next(
            (
                a
                for a in self.ack_log
                if a.envelope_id == envelope_id and a.delivery == delivery.count
            ),
            None,
        )

    def _live_connection(self) -> _Connection | None:
        return next((c for c in reversed(self._connections) if c.is_live), None)

    def _require_live(self) -> _Connection:
        conn = self._live_connection()
        if conn is None:
            raise RuntimeError("no live Socket Mode connection: the client is not connected now")
        return conn

    async def _send_envelope(self, envelope: _Json) -> _Json:
        envelope_id = envelope["envelope_id"]
        self._envelopes.add(envelope_id)
        conn = self._live_connection()
        if conn is None:
            self._pending.append(envelope)
            return copy.deepcopy(envelope)
        previous = self._deliveries.get(envelope_id)
        delivery = _Delivery(1 if previous is None else previous.count + 1, time.monotonic())
        self._deliveries[envelope_id] = delivery
        try:
            await conn.ws.send_str(json.dumps(envelope))
        except ConnectionResetError:
            log.debug("socket %d went away mid-send; envelope kept", conn.connection_id)
            conn.is_retired = True
            self._pending.append(envelope)
            return copy.deepcopy(envelope)
        if self._retry_unacked_after_s is not None and envelope["type"] == "events_api":
            self._spawn(self._retry_if_unacked(envelope, delivery.count))
        return copy.deepcopy(envelope)

    async def _retry_if_unacked(self, envelope: _Json, delivery: int) -> None:
        assert self._retry_unacked_after_s is not None
        envelope_id = envelope["envelope_id"]
        try:
            async with asyncio.timeout(self._retry_unacked_after_s), self._ack_changed:
                await self._ack_changed.wait_for(
                    lambda: any(
                        a.envelope_id == envelope_id and a.delivery >= delivery
                        for a in self.ack_log
                    )
                )
        except TimeoutError:
            current = self._deliveries[envelope_id].count
            if current == delivery and int(envelope.get("retry_attempt") or 0) < _MAX_EVENT_RETRIES:
                log.debug("envelope %s not acked in time; resending", envelope_id)
                await self.redeliver(envelope)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("fake Slack background task failed", exc_info=task.exception())

    # -- Web API plumbing ------------------------------------------------------------------

    def _build_methods(self) -> dict[str, _Method]:
        bot, app = _Token.BOT, _Token.APP
        return {
            "auth.test": _Method(self._auth_test, bot, None),
            "apps.connections.open": _Method(self._connections_open, app, None),
            "chat.postMessage": _Method(self._post_message, bot, "chat:write"),
            "chat.update": _Method(self._update, bot, "chat:write"),
            "chat.postEphemeral": _Method(self._post_ephemeral, bot, "chat:write"),
            "reactions.add": _Method(self._reactions_add, bot, "reactions:write"),
            "conversations.info": _Method(self._conversations_info, bot, "channels:read"),
            "users.info": _Method(self._users_info, bot, "users:read"),
            "files.info": _Method(self._files_info, bot, "files:read"),
            "views.open": _Method(self._views_open, bot, None),
        }

    def _check_method(self, method: str) -> None:
        if method not in self._methods and method not in (RESPONSE_URL, FILE_DOWNLOAD):
            raise ValueError(
                f"the fake serves no method {method!r}; known: "
                f"{sorted(self._methods)} and {RESPONSE_URL!r}, {FILE_DOWNLOAD!r}"
            )

    def _token_kind(self, token: str | None) -> _Token | None:
        return {BOT_TOKEN: _Token.BOT, APP_TOKEN: _Token.APP}.get(token or "")

    async def _api(self, request: web.Request) -> web.StreamResponse:
        arrived_at_s = time.monotonic()
        name = request.match_info["method"]
        params: _Json = dict(request.query)
        is_body_ok = True
        try:
            if request.content_type == "application/json":
                body = await request.json() if request.can_read_body else {}
                if not isinstance(body, dict):
                    raise ValueError("the JSON body is not an object")
                params |= body
            else:
                params |= dict(await request.post())
        except ValueError:
            is_body_ok = False
        token = _bearer(request) or (
            params.get("token") if isinstance(params.get("token"), str) else None
        )
        method = self._methods.get(name)
        status, headers = 200, {"x-slack-req-id": secrets.token_hex(16)}
        kind = self._token_kind(token)
        if kind is _Token.BOT:
            headers["x-oauth-scopes"] = ",".join(sorted(self.scopes))
            if method is not None and method.scope is not None:
                headers["x-accepted-oauth-scopes"] = method.scope
        reply: _Json
        if method is None:
            reply = {"ok": False, "error": "unknown_method", "req_method": name}
        elif not is_body_ok:
            reply = {"ok": False, "error": "invalid_json"}
        elif token is None:
            reply = {"ok": False, "error": "not_authed"}
        elif kind is None:
            reply = {"ok": False, "error": "invalid_auth"}
        elif kind is not method.token:
            reply = {"ok": False, "error": "not_allowed_token_type"}
        elif method.scope is not None and method.scope not in self.scopes:
            reply = {
                "ok": False,
                "error": "missing_scope",
                "needed": method.scope,
                "provided": ",".join(sorted(self.scopes)),
            }
        elif (rule := self._take_rate_limit(name)) is not None:
            self.rate_limited_count += 1
            reply = {"ok": False, "error": "ratelimited"}
            if not rule.is_in_body:
                status = 429
                headers["Retry-After"] = str(rule.retry_after)
        else:
            try:
                reply = {"ok": True, **await method.handler(params)}
            except _SlackError as exc:
                reply = {"ok": False, "error": exc.error, **exc.extra}
        self._record(name, params, request, token, status, reply.get("error"), arrived_at_s)
        return _json_response(reply, status=status, headers=headers)

    def _record(
        self,
        method: str,
        params: Mapping[str, Any],
        request: web.Request,
        token: str | None,
        status: int,
        error: str | None,
        arrived_at_s: float,
    ) -> None:
        call = RecordedCall(
            method=method,
            params=dict(params),
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            token=token,
            status=status,
            error=error,
            arrived_at_s=arrived_at_s,
        )
        self.calls.append(call)
        self.requests.put_nowait(call)
        log.debug("fake Slack %s -> %d %s", method, status, error or "ok")

    def _take_rate_limit(self, method: str) -> _RateLimitRule | None:
        for rule in self._rate_limit_rules:
            if rule.method == method:
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._rate_limit_rules.remove(rule)
                return rule
        return None

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text="Not Found")

    # -- Web API methods -------------------------------------------------------------------

    async def _auth_test(self, params: _Json) -> _Json:
        return {
            "url": f"https://{_TEAM_DOMAIN}.slack.com/",
            "team": _TEAM_NAME,
            "user": _BOT_NAME,
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    async def _connections_open(self, params: _Json) -> _Json:
        ticket = str(next(self._ids))
        self._tickets[ticket] = False
        return {"url": f"ws://{self._require_origin()}{_LINK_PATH}?ticket={ticket}&app_id={APP_ID}"}

    async def _post_message(self, params: _Json) -> _Json:
        channel = self._channel_arg(params)
        text, blocks = self._content_args(params)
        parent = None
        if params.get("thread_ts"):
            parent = self._thread_parent(channel, str(params["thread_ts"]))
            if parent is None:
                raise _SlackError("thread_not_found")
        options = {
            key: _as_bool(params.get(key)) for key in ("unfurl_links", "unfurl_media", "mrkdwn")
        }
        message = _Message(
            channel,
            self._ts.next(),
            BOT_USER_ID,
            text,
            None if parent is None else parent.ts,
            blocks=blocks,
            options=options,
            history=[text],
        )
        self._store_message(message, parent)
        return {"channel": channel, "ts": message.ts, "message": self._wire(message)}

    async def _update(self, params: _Json) -> _Json:
        channel = self._channel_arg(params)
        message = self._messages.get((channel, str(params.get("ts", ""))))
        if message is None:
            raise _SlackError("message_not_found")
        if not message.is_bot:
            raise _SlackError("cant_update_message")
        text, blocks = self._content_args(params)
        message.text = text
        message.history.append(text)
        if blocks is not None:
            message.blocks = blocks
        return {
            "channel": channel,
            "ts": message.ts,
            "text": text,
            "message": self._wire(message),
        }

    async def _post_ephemeral(self, params: _Json) -> _Json:
        channel = self._channel_arg(params)
        user = str(params.get("user", ""))
        if user not in self._users:
            raise _SlackError("user_not_found")
        text, blocks = self._content_args(params)
        ts = self._ts.next()
        self.ephemerals.append(
            {
                "channel": channel,
                "user": user,
                "text": text,
                "blocks": blocks,
                "thread_ts": params.get("thread_ts"),
                "message_ts": ts,
            }
        )
        return {"message_ts": ts}

    async def _reactions_add(self, params: _Json) -> _Json:
        channel = self._channel_arg(params)
        name = str(params.get("name", ""))
        if not _REACTION_NAME.match(name):
            raise _SlackError("invalid_name")
        message = self._messages.get((channel, str(params.get("timestamp", ""))))
        if message is None:
            raise _SlackError("message_not_found")
        users = message.reactions.setdefault(name, [])
        if BOT_USER_ID in users:
            raise _SlackError("already_reacted")
        users.append(BOT_USER_ID)
        return {}

    async def _conversations_info(self, params: _Json) -> _Json:
        channel = self._channel_arg(params)
        return {"channel": copy.deepcopy(self._channels[channel])}

    async def _users_info(self, params: _Json) -> _Json:
        user = self._users.get(str(params.get("user", "")))
        if user is None:
            raise _SlackError("user_not_found")
        return {"user": copy.deepcopy(user)}

    async def _files_info(self, params: _Json) -> _Json:
        stored = self._files.get(str(params.get("file", "")))
        if stored is None:
            raise _SlackError("file_not_found")
        return {
            "file": copy.deepcopy(stored.info),
            "comments": [],
            "response_metadata": {"next_cursor": ""},
        }

    async def _views_open(self, params: _Json) -> _Json:
        trigger = self._triggers.get(str(params.get("trigger_id", "")))
        if trigger is None:
            raise _SlackError("invalid_trigger_id")
        if trigger.is_used:
            raise _SlackError("exchanged_trigger_id")
        if time.monotonic() - trigger.created_s > _TRIGGER_TTL_S:
            raise _SlackError("expired_trigger_id")
        view = params.get("view")
        if isinstance(view, str):
            try:
                view = json.loads(view)
            except ValueError:
                raise _SlackError("invalid_arguments") from None
        if not isinstance(view, dict) or view.get("type") != "modal":
            raise _SlackError("invalid_arguments")
        trigger.is_used = True
        opened = {
            **view,
            "id": f"V{next(self._ids):010d}",
            "team_id": TEAM_ID,
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "root_view_id": None,
            "app_id": APP_ID,
            "bot_id": BOT_ID,
        }
        opened["root_view_id"] = opened["id"]
        self.views.append(copy.deepcopy(opened))
        return {"view": opened}

    def _channel_arg(self, params: _Json) -> str:
        channel = str(params.get("channel", ""))
        if channel not in self._channels:
            raise _SlackError("channel_not_found")
        return channel

    def _content_args(self, params: _Json) -> tuple[str, list[Any] | None]:
        text = params.get("text")
        text = "" if text is None else str(text)
        blocks = _as_json_list(params.get("blocks"), "invalid_blocks")
        if len(text) > MAX_TEXT_CHARS:
            raise _SlackError("msg_too_long")
        if blocks is not None and (
            len(blocks) > _MAX_BLOCKS
            or not all(isinstance(b, dict) and "type" in b for b in blocks)
        ):
            raise _SlackError("invalid_blocks")
        if not text and not blocks:
            raise _SlackError("no_text")
        return text, blocks

    # -- response_url and files ------------------------------------------------------------

    async def _response_url(self, request: web.Request) -> web.Response:
        arrived_at_s = time.monotonic()
        url = f"http://{self._require_origin()}{request.path}"
        hook = self._response_urls.get(url)
        try:
            body = await request.json()
        except ValueError:
            body = None
        params = body if isinstance(body, dict) else {}
        status, error = 200, None
        if hook is None or time.monotonic() - hook.created_s > _RESPONSE_URL_TTL_S:
            status, error = 404, "expired_url"
        elif hook.uses >= _RESPONSE_URL_USES:
            status, error = 404, "used_url"
        elif body is None or not isinstance(body, dict):
            status, error = 400, "invalid_payload"
        elif _as_bool(params.get("delete_original")) and hook.message_ts is not None:
            hook.uses += 1
            self._delete_message(hook.channel, hook.message_ts)
        else:
            try:
                text, blocks = self._content_args(params)
            except _SlackError as exc:
                status, error = 400, exc.error
            else:
                hook.uses += 1
                self._respond(hook, params, text, blocks)
        self._record(RESPONSE_URL, params, request, None, status, error, arrived_at_s)
        return web.Response(status=status, text=error or "ok", content_type="text/html")

    def _respond(
        self, hook: _ResponseUrl, params: _Json, text: str, blocks: list[Any] | None
    ) -> None:
        original = (
            None if hook.message_ts is None else self._messages.get((hook.channel, hook.message_ts))
        )
        thread_ts = params.get("thread_ts")
        parent = None if not thread_ts else self._thread_parent(hook.channel, str(thread_ts))
        if original is not None and _as_bool(params.get("replace_original")):
            original.text = text
            original.history.append(text)
            original.blocks = blocks
        elif params.get("response_type") == "in_channel":
            message = _Message(
                hook.channel,
                self._ts.next(),
                BOT_USER_ID,
                text,
                None if parent is None else parent.ts,
                blocks=blocks,
                history=[text],
            )
            self._store_message(message, parent)
        else:
            self.ephemerals.append(
                {
                    "channel": hook.channel,
                    "user": hook.user,
                    "text": text,
                    "blocks": blocks,
                    "thread_ts": None if parent is None else parent.ts,
                    "message_ts": self._ts.next(),
                }
            )

    async def _download(self, request: web.Request) -> web.Response:
        arrived_at_s = time.monotonic()
        token = _bearer(request)
        team_file = request.match_info["team_file"]
        file_id = team_file.removeprefix(f"{TEAM_ID}-")
        stored = self._files.get(file_id)
        if stored is None or request.match_info["name"] != stored.info["name"]:
            self._record(
                FILE_DOWNLOAD,
                {"file": file_id},
                request,
                token,
                404,
                "file_not_found",
                arrived_at_s,
            )
            return web.Response(status=404, text="Not Found")
        if token != BOT_TOKEN or "files:read" not in self.scopes:
            # Slack sends an unauthorised download to its sign-in page, which answers 200.
            self._record(
                FILE_DOWNLOAD, {"file": file_id}, request, token, 302, "not_authed", arrived_at_s
            )
            raise web.HTTPFound(f"{_SIGN_IN_PATH}?redir={quote(request.path)}")
        self._record(FILE_DOWNLOAD, {"file": file_id}, request, token, 200, None, arrived_at_s)
        headers = {"Content-Disposition": f'attachment; filename="{stored.info["name"]}"'}
        return web.Response(
            body=stored.content, content_type=stored.info["mimetype"], headers=headers
        )

    async def _sign_in(self, request: web.Request) -> web.Response:
        return web.Response(body=_SIGN_IN_PAGE, content_type="text/html")

    def _store_file(self, user_id: str, ts: str, shared: SharedFile) -> _Json:
        file_id = f"F{next(self._ids):09d}"
        mimetype = (
            shared.mimetype or mimetypes.guess_type(shared.name)[0] or "application/octet-stream"
        )
        extension = shared.name.rsplit(".", 1)[-1].lower() if "." in shared.name else ""
        filetype = "text" if mimetype == "text/plain" else (extension or "binary")
        base = f"http://{self._require_origin()}{_FILES_PREFIX}/{TEAM_ID}-{file_id}"
        info: _Json = {
            "id": file_id,
            "created": int(float(ts)),
            "timestamp": int(float(ts)),
            "name": shared.name,
            "title": shared.name,
            "mimetype": mimetype,
            "filetype": filetype,
            "pretty_type": "Plain Text" if filetype == "text" else filetype.upper(),
            "user": user_id,
            "user_team": TEAM_ID,
            "editable": shared.is_snippet,
            "size": len(shared.content),
            "mode": "snippet" if shared.is_snippet else "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": True,
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": f"{base}/{shared.name}",
            "url_private_download": f"{base}/download/{shared.name}",
            "permalink": f"https://{_TEAM_DOMAIN}.slack.com/files/{user_id}/{file_id}/{shared.name}",
            "is_starred": False,
            "has_rich_preview": False,
            "file_access": "visible",
        }
        if shared.is_snippet:
            text = shared.content.decode("utf-8", "replace")
            lines = text.splitlines()
            info |= {
                "preview": "\n".join(lines[:5]),
                "preview_is_truncated": len(lines) > 5,
                "lines": len(lines),
                "lines_more": max(0, len(lines) - 5),
            }
        self._files[file_id] = _StoredFile(info, shared.content)
        return info

    # -- messages --------------------------------------------------------------------------

    def _thread_parent(self, channel: str, thread_ts: str) -> _Message | None:
        """The thread's parent for ``thread_ts``; a reply's ts resolves to its parent."""
        message = self._messages.get((channel, thread_ts))
        if message is not None and message.thread_ts is not None:
            message = self._messages[channel, message.thread_ts]
        return message

    def _store_message(self, message: _Message, parent: _Message | None) -> None:
        self._messages[message.channel, message.ts] = message
        self._channel_ts[message.channel].append(message.ts)
        if parent is not None:
            parent.reply_ts.append(message.ts)

    def _delete_message(self, channel: str, ts: str) -> None:
        """Remove a message; a thread parent with replies stays as Slack's tombstone."""
        message = self._messages.get((channel, ts))
        if message is None:
            return
        if message.reply_ts:
            message.text, message.blocks = "This message was deleted.", None
            message.history.append(message.text)
            return
        del self._messages[channel, ts]
        self._channel_ts[channel].remove(ts)
        if message.thread_ts is not None:
            self._messages[channel, message.thread_ts].reply_ts.remove(ts)

    def _wire(self, message: _Message) -> _Json:
        """The message object as Slack returns it from chat.postMessage / chat.update."""
        wire: _Json = {
            "user": message.user,
            "type": "message",
            "ts": message.ts,
            "text": message.text,
            "team": TEAM_ID,
        }
        if message.is_bot:
            wire |= {
                "bot_id": BOT_ID,
                "app_id": APP_ID,
                "bot_profile": {
                    "id": BOT_ID,
                    "app_id": APP_ID,
                    "name": _BOT_NAME,
                    "deleted": False,
                    "team_id": TEAM_ID,
                },
            }
        if message.blocks is not None:
            wire["blocks"] = copy.deepcopy(message.blocks)
        if message.thread_ts is not None:
            parent = self._messages[message.channel, message.thread_ts]
            wire |= {"thread_ts": message.thread_ts, "parent_user_id": parent.user}
        if len(message.history) > 1:
            wire["edited"] = {"user": message.user, "ts": message.ts}
        return wire

    def _snapshot(self, message: _Message) -> _Json:
        snapshot: _Json = {
            "ts": message.ts,
            "user": message.user,
            "text": message.text,
            "text_history": list(message.history),
            "thread_ts": message.thread_ts,
            "blocks": copy.deepcopy(message.blocks),
            "reactions": {name: list(users) for name, users in message.reactions.items()},
            "reply_count": len(message.reply_ts),
            "files": copy.deepcopy(message.files),
        }
        for key in ("unfurl_links", "unfurl_media", "mrkdwn"):
            snapshot[key] = message.options.get(key)
        return snapshot


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
