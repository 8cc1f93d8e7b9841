"""Fake Discord (REST v10 and gateway v10) on 127.0.0.1 that the real discord.py client talks to.

Invariant: every dispatch sent to a gateway session is kept in that session's log under its
sequence number, so a RESUME replays exactly the dispatches the client has not seen.

The far end has one guild (`GUILD_ID`) with two text channels (`CHANNEL_ID`, where the bot
works, and `OTHER_CHANNEL_ID`), three roles and three members: the bot (`BOT_USER_ID`,
username "Concordia"; the application id is the same number, as for every bot made since
2016), `ALICE_ID` (guild owner, operator role) and `BOB_ID`.

Point discord.py at it with two class attributes, set before ``client.start()`` and restored
afterwards (they are shared by every client in the process)::

    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)

Behaviour copied from Discord, because a client that gets it wrong should fail here too:

- REST replies carry ``Content-Type: application/json`` exactly (discord.py reads a body with
  ``; charset=utf-8`` as text), ``Via: 1.1 google`` and ``X-RateLimit-*`` headers (50
  requests per bucket per second, never enforced, so ordinary tests are never throttled;
  ``route_limits`` makes chosen routes advertise and enforce real limits). A 429 without
  ``Via`` would look like a Cloudflare ban to discord.py, so injected 429s carry it too.
- Bot routes need ``Authorization: Bot TOKEN`` (401 otherwise); ``/interactions/…`` and
  ``/webhooks/…`` are authorised by the token in the path instead.
- Content over 2,000 characters, an empty message, unknown flags and malformed
  ``allowed_mentions`` are refused with 400 / code 50035 or 50006 like Discord does.
- Messages the bot posts come back to it as ``MESSAGE_CREATE`` (edits as
  ``MESSAGE_UPDATE``), as on Discord, so adapters must filter out their own posts.
- Without the MESSAGE_CONTENT intent, other users' messages arrive with empty content,
  embeds and attachments unless they mention the bot. ``GUILD_CREATE`` lists only the bot's
  own member unless the GUILD_PRESENCES intent is on (Discord's rule); op 8 returns them all.
- A thread started from a message has the message's id. An interaction must be answered
  within 3 s (later: 404 code 10062) and only once (400 code 40060). After a deferred
  response (type 5) the first followup replaces the "thinking" message instead of posting a
  new one, and inherits its ephemeral flag.
- Message ``components`` are action rows (type 1) of buttons (type 2), checked as Discord
  checks them (at most 5 rows of 5, a custom_id on every non-link button, unique in the
  message, at most 100 characters) and stored with a sequential ``id`` on each component;
  an edit with ``components: []`` takes them away. ``click_button`` dispatches a
  MESSAGE_COMPONENT interaction (type 3) carrying the message; it is answered with type 4 or
  5 (a new message, shown as a reply to the clicked one), 6 (ack; ``@original`` is then the
  clicked message) or 7 (edit the clicked message). Application commands take 4 or 5 only.
- Every ``allowed_mentions`` the bot sent with a message (create and each edit) is kept,
  and shown to tests as ``allowed_mentions_history``.
- The gateway honours ``compress=zlib-stream`` (one zlib stream per connection, each frame
  ended by ``Z_SYNC_FLUSH``) and ``zstd-stream`` when ``zstandard`` (or Python 3.14's
  ``compression.zstd``) is importable; discord.py asks for zstd only in exactly that case,
  so the two always agree. Only ``encoding=json`` and ``v=10`` are served.
- READY's ``resume_gateway_url`` is ``/gateway-resume``, a different path from the default
  ``/gateway``, so a test can tell a RESUME dial from a fresh one. A client closing with
  1000 or 1001 ends its session (Discord's rule); any other close leaves it resumable.
- ``POST /users/@me/channels`` opens (or returns the existing) DM channel with a member; a
  message the bot posts there comes back as a ``MESSAGE_CREATE`` without ``guild_id``,
  under the DIRECT_MESSAGES intent, as on Discord.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import enum
import hashlib
import importlib
import itertools
import json
import logging
import math
import mimetypes
import re
import secrets
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import unquote

from aiohttp import BodyPartReader, WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.fakes._server import serve_on_loopback

__all__ = [
    "ALICE_ID",
    "APPLICATION_ID",
    "BOB_ID",
    "BOT_ROLE_ID",
    "BOT_USERNAME",
    "BOT_USER_ID",
    "CHANNEL_ID",
    "GUILD_ID",
    "OPERATOR_ROLE_ID",
    "OTHER_CHANNEL_ID",
    "TOKEN",
    "FakeDiscord",
    "GatewayFrame",
    "GatewayOp",
    "RecordedCall",
]

log = logging.getLogger(__name__)

# Known ids. They are snowflakes from 2024, so anything the fake creates later sorts after them.
BOT_USER_ID = 1203000000000000001
APPLICATION_ID = BOT_USER_ID
GUILD_ID = 1203000000000000100
CHANNEL_ID = 1203000000000000200
OTHER_CHANNEL_ID = 1203000000000000201
OPERATOR_ROLE_ID = 1203000000000000300
BOT_ROLE_ID = 1203000000000000301
ALICE_ID = 1203000000000000401
BOB_ID = 1203000000000000402
BOT_USERNAME = "Concordia"
# Shaped like a bot token (base64 user id . timestamp . hmac); it only opens this fake.
TOKEN = "MTIwMzAwMDAwMDAwMDAwMDAwMQ.ZmFrZQ.concordia-fake-token-opens-only-the-fake"


class GatewayOp(enum.IntEnum):
    """Gateway opcodes (discord.com/developers/docs/topics/opcodes-and-status-codes)."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


_API_PREFIX = "/api/v10"
_GATEWAY_PATH = "/gateway"
_RESUME_GATEWAY_PATH = "/gateway-resume"
_CDN_PREFIX = "/attachments"
_GATEWAY_VERSION = "10"

_DISCORD_EPOCH_MS = 1_420_070_400_000
_CREATED_AT = "2024-01-26T12:00:00.000000+00:00"

# Intents (discord.com/developers/docs/events/gateway#gateway-intents).
_INTENT_GUILDS = 1 << 0
_INTENT_GUILD_PRESENCES = 1 << 8
_INTENT_GUILD_MESSAGES = 1 << 9
_INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
_INTENT_DIRECT_MESSAGES = 1 << 12
_INTENT_MESSAGE_CONTENT = 1 << 15
_ALL_INTENTS = (1 << 26) - 1

# Message flags and types.
_FLAG_SUPPRESS_EMBEDS = 1 << 2
_FLAG_EPHEMERAL = 1 << 6
_FLAG_LOADING = 1 << 7
_FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
_FLAG_IS_VOICE_MESSAGE = 1 << 13
_FLAG_IS_COMPONENTS_V2 = 1 << 15
_CREATE_FLAGS = (
    _FLAG_SUPPRESS_EMBEDS
    | _FLAG_SUPPRESS_NOTIFICATIONS
    | _FLAG_IS_VOICE_MESSAGE
    | _FLAG_IS_COMPONENTS_V2
)
_INTERACTION_FLAGS = _CREATE_FLAGS | _FLAG_EPHEMERAL
_TYPE_DEFAULT = 0
_TYPE_REPLY = 19
_TYPE_CHAT_INPUT_COMMAND = 20
_CHANNEL_GUILD_TEXT = 0
_CHANNEL_DM = 1
_CHANNEL_PUBLIC_THREAD = 11
_INTERACTION_APPLICATION_COMMAND = 2
_INTERACTION_MESSAGE_COMPONENT = 3
_CALLBACK_CHANNEL_MESSAGE = 4
_CALLBACK_DEFERRED_CHANNEL_MESSAGE = 5
_CALLBACK_DEFERRED_UPDATE_MESSAGE = 6
_CALLBACK_UPDATE_MESSAGE = 7
# Components (discord.com/developers/docs/components/reference).
_COMPONENT_ACTION_ROW = 1
_COMPONENT_BUTTON = 2
_BUTTON_STYLE_LINK = 5
_BUTTON_STYLE_PREMIUM = 6
_MAX_ACTION_ROWS = 5
_MAX_ROW_BUTTONS = 5
_MAX_CUSTOM_ID_CHARS = 100
_MAX_BUTTON_LABEL_CHARS = 80

# Permissions (as Discord sends them: decimal strings).
_PERMS_EVERYONE = (
    (1 << 6)  # ADD_REACTIONS
    | (1 << 10)  # VIEW_CHANNEL
    | (1 << 11)  # SEND_MESSAGES
    | (1 << 14)  # EMBED_LINKS
    | (1 << 15)  # ATTACH_FILES
    | (1 << 16)  # READ_MESSAGE_HISTORY
    | (1 << 31)  # USE_APPLICATION_COMMANDS
    | (1 << 35)  # CREATE_PUBLIC_THREADS
    | (1 << 38)  # SEND_MESSAGES_IN_THREADS
)
_PERMS_MODERATOR = _PERMS_EVERYONE | (1 << 13) | (1 << 34)  # + MANAGE_MESSAGES, MANAGE_THREADS
_PERMS_ALL = (1 << 51) - 1

# Limits Discord enforces.
_MAX_CONTENT_CHARS = 2000
_MAX_EMBEDS = 10
_MAX_EMBED_DESCRIPTION_CHARS = 4096
_MAX_NONCE_CHARS = 25
_MAX_THREAD_NAME_CHARS = 100
_THREAD_ARCHIVE_MINUTES = (60, 1440, 4320, 10080)
_DEFAULT_ARCHIVE_MINUTES = 4320
_MAX_COMMAND_DESCRIPTION_CHARS = 100
_COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")
_ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
_DEFAULT_HISTORY_LIMIT = 50
_MAX_HISTORY_LIMIT = 100
# "the past few minutes" for enforce_nonce; Discord does not say exactly.
_NONCE_WINDOW_S = 300.0
_INTERACTION_ACK_DEADLINE_S = 3.0
_INTERACTION_TOKEN_TTL_S = 15 * 60.0

# Success-path rate limit buckets: generous, so only injected 429s throttle a test (unless
# `route_limits` asks for real limits on some routes).
_BUCKET_LIMIT = 50
_BUCKET_WINDOW_S = 1.0

_DEFAULT_HEARTBEAT_INTERVAL_MS = 41_250
_WS_CLOSE_TIMEOUT_S = 2.0
_SHUTDOWN_TIMEOUT_S = 1.0
_CLIENT_MAX_BYTES = 25 * 1024 * 1024

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_EVERYONE_MENTION = re.compile(r"@(everyone|here)\b")
_MENTION_PARSE_KINDS = frozenset({"users", "roles", "everyone"})
_SUBCOMMAND = 1
_OPTION_BOOLEAN = 5
# Option types send_interaction can fill in: STRING, INTEGER, BOOLEAN, NUMBER.
_OPTION_PYTHON_TYPES: dict[Any, tuple[type, ...]] = {
    3: (str,),
    4: (int,),
    _OPTION_BOOLEAN: (bool,),
    10: (int, float),
}

_CLOSE_REASONS = {
    1001: "Going away.",
    4000: "Unknown error.",
    4001: "Unknown opcode.",
    4002: "Decode error.",
    4003: "Not authenticated.",
    4004: "Authentication failed.",
    4005: "Already authenticated.",
    4007: "Invalid seq.",
    4008: "Rate limited.",
    4009: "Session timed out.",
    4010: "Invalid shard.",
    4011: "Sharding required.",
    4012: "Invalid API version.",
    4013: "Invalid intent(s).",
    4014: "Disallowed intent(s).",
}
_CLIENT_ENDS_SESSION = frozenset({1000, 1001})

_Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One REST request as the fake received it, with the status it was answered with.

    ``path`` is decoded and relative to ``api_base`` (``/channels/1/messages/2/reactions/👀/@me``);
    ``route`` is the matched template in discord.py's ``Route.key`` form
    (``PUT /channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me``), or ``""``
    when nothing matched. ``json`` is the JSON body (``payload_json`` of a multipart upload),
    or None; ``files`` holds uploaded ``(filename, bytes)`` pairs. ``arrived_at_s`` is the
    ``time.monotonic()`` at which the request arrived, so a test can check the pacing after
    a 429.
    """

    method: str
    path: str
    route: str
    json: Any
    headers: CIMultiDictProxy[str]
    query: Mapping[str, str]
    status: int
    files: tuple[tuple[str, bytes], ...] = ()
    arrived_at_s: float = 0.0


@dataclass(frozen=True, slots=True)
class GatewayFrame:
    """One frame the client sent on the gateway: ``op``, ``d``, and which socket and path."""

    op: int
    d: Any
    connection_id: int
    path: str


class _Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...


class _ZlibStream:
    """One zlib stream for the connection's life; each frame ends with Z_SYNC_FLUSH."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


class _ZstdStream:
    """One zstd frame for the connection's life; each gateway frame is a flushed block."""

    def __init__(self) -> None:
        try:
            zstandard = importlib.import_module("zstandard")
        except ImportError:
            zstd = importlib.import_module("compression.zstd")  # Python 3.14+
            compressor = zstd.ZstdCompressor()
            self._compress: Callable[[bytes], bytes] = lambda data: compressor.compress(
                data, mode=zstd.ZstdCompressor.FLUSH_BLOCK
            )
        else:
            stream = zstandard.ZstdCompressor().compressobj()
            self._compress = lambda data: (
                stream.compress(data) + stream.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            )

    def compress(self, data: bytes) -> bytes:
        return self._compress(data)


def _has_zstd() -> bool:
    for name in ("zstandard", "compression.zstd"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        return True
    return False


def _make_compressor(compress: str | None) -> _Compressor | None:
    """The compressor for a ``compress=`` query value; ValueError for one the fake lacks."""
    if compress is None:
        return None
    if compress == "zlib-stream":
        return _ZlibStream()
    if compress == "zstd-stream" and _has_zstd():
        return _ZstdStream()
    raise ValueError(
        f"the fake gateway cannot compress={compress!r}: it serves zlib-stream, and "
        "zstd-stream only when zstandard (or compression.zstd) is importable"
    )


@dataclass(slots=True, eq=False)
class _Session:
    session_id: str
    intents: int
    shard: list[int] | None
    seq: int = 0
    log: list[_Json] = field(default_factory=list)
    conn: _Connection | None = None
    is_valid: bool = True
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True, eq=False)
class _Connection:
    """One gateway WebSocket. ``send_lock`` keeps compression and writes in frame order."""

    connection_id: int
    ws: web.WebSocketResponse
    request: web.Request
    path: str
    compressor: _Compressor | None
    session: _Session | None = None
    is_closed_by_fake: bool = False
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: _Json) -> bool:
        """Write one frame; False when the socket is already gone (the frame is not sent)."""
        data = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
        async with self.send_lock:
            if self.ws.closed:
                return False
            try:
                if self.compressor is None:
                    await self.ws.send_str(data)
                else:
                    await self.ws.send_bytes(self.compressor.compress(data.encode()))
            except ConnectionResetError:
                log.debug("gateway connection %d went away mid-send", self.connection_id)
                return False
        return True

    async def close(self, code: int) -> None:
        self.is_closed_by_fake = True
        reason = _CLOSE_REASONS.get(code, "").encode()
        await self.ws.close(code=code, message=reason)

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (the client sees 1006)."""
        self.is_closed_by_fake = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()


@dataclass(slots=True, eq=False)
class _StoredMessage:
    payload: _Json  # the REST message object as it is now
    history: list[str]  # every content it has had, oldest first
    # The ``allowed_mentions`` sent with the create and with each edit (None: not sent).
    allowed_mentions: list[Any] = field(default_factory=list)
    is_ephemeral: bool = False
    is_deleted: bool = False


@dataclass(slots=True, eq=False)
class _Interaction:
    payload: _Json
    created_s: float  # time.monotonic() when dispatched
    command_name: str  # "" for a component interaction
    response_type: int | None = None
    # The "@original" message: the response's, or for a component interaction answered with
    # type 6 or 7, the message the component is on.
    original_id: int | None = None
    message_ids: list[int] = field(default_factory=list)  # messages this interaction created

    @property
    def interaction_type(self) -> int:
        return int(self.payload["type"])

    @property
    def interacted_message_id(self) -> int | None:
        """The message whose component was used (component interactions only)."""
        message = self.payload.get("message")
        return None if message is None else int(message["id"])


@dataclass(slots=True)
class _RateLimitRule:
    route: str | None
    retry_after: float
    is_global: bool
    remaining: int


@dataclass(slots=True)
class _Bucket:
    window_start_s: float
    used: int = 0


@dataclass(frozen=True, slots=True)
class _Call:
    params: dict[str, str]
    body: Any
    files: tuple[tuple[str, bytes], ...]
    query: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: Any = None  # None: no body (204)


class _ApiError(Exception):
    """A Discord error reply: ``{"message", "code"[, "errors"]}`` with an HTTP status."""

    def __init__(self, status: int, code: int, message: str, errors: _Json | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: _Json = {"message": message, "code": code}
        if errors is not None:
            self.body["errors"] = errors

    @classmethod
    def invalid_form(cls, where: Sequence[str], error_code: str, message: str) -> _ApiError:
        """400 / 50035 with Discord's nested ``errors`` tree for the field at ``where``."""
        errors: _Json = {"_errors": [{"code": error_code, "message": message}]}
        for key in reversed(where):
            errors = {key: errors}
        return cls(400, 50035, "Invalid Form Body", errors)


_Handler = Callable[[_Call], Awaitable[_Reply]]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    template: str
    handler: _Handler
    needs_auth: bool
    segments: tuple[str, ...]
    bucket_param: str | None  # the "major parameter" Discord buckets this route by

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


_MAJOR_PARAMS = ("channel_id", "guild_id", "webhook_id")


def _route(method: str, template: str, handler: _Handler) -> _Route:
    segments = tuple(template.split("/")[1:])
    needs_auth = not template.startswith(("/interactions/", "/webhooks/", "/gateway"))
    names = {s[1:-1] for s in segments if s.startswith("{")}
    bucket_param = next((p for p in _MAJOR_PARAMS if p in names), None)
    return _Route(method, template, handler, needs_auth, segments, bucket_param)


class _Snowflakes:
    """Time-ordered snowflake ids, unique within the process."""

    _increment = itertools.count()

    def next(self) -> int:
        ms = int(time.time() * 1000) - _DISCORD_EPOCH_MS
        return (ms << 22) | (1 << 17) | (1 << 12) | (next(self._increment) & 0xFFF)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _json_response(
    status: int, body: Any, headers: Mapping[str, str] | None = None
) -> web.Response:
    # Exactly "application/json": discord.py treats "application/json; charset=utf-8" as text.
    all_headers = {"Content-Type": "application/json", "Via": "1.1 google", **(headers or {})}
    return web.Response(status=status, body=json.dumps(body).encode(), headers=all_headers)


def _user(user_id: int, username: str, *, is_bot: bool = False) -> _Json:
    user: _Json = {
        "id": str(user_id),
        "username": username,
        "discriminator": "0",
        "global_name": None if is_bot else username.title(),
        "avatar": None,
        "avatar_decoration_data": None,
        "banner": None,
        "accent_color": None,
        "public_flags": 0,
        "flags": 0,
        "primary_guild": None,
        "collectibles": None,
    }
    if is_bot:
        user["bot"] = True
    return user


def _role(role_id: int, name: str, position: int, permissions: int, **extra: Any) -> _Json:
    return {
        "id": str(role_id),
        "name": name,
        "description": None,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": position,
        "permissions": str(permissions),
        "managed": False,
        "mentionable": False,
        "flags": 0,
        **extra,
    }


def _text_channel(channel_id: int, name: str, position: int) -> _Json:
    return {
        "id": str(channel_id),
        "type": _CHANNEL_GUILD_TEXT,
        "guild_id": str(GUILD_ID),
        "name": name,
        "position": position,
        "permission_overwrites": [],
        "parent_id": None,
        "topic": None,
        "nsfw": False,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "default_auto_archive_duration": _DEFAULT_ARCHIVE_MINUTES,
        "default_thread_rate_limit_per_user": 0,
        "flags": 0,
    }


def _emoji(raw: str) -> _Json:
    """The emoji object for a reaction path segment: ``👀``, ``name:id`` or ``a:name:id``."""
    if ":" in raw:
        parts = raw.split(":")
        name, emoji_id = parts[-2], parts[-1]
        if not emoji_id.isdigit() or not name:
            raise _ApiError(400, 10014, "Unknown Emoji")
        return {"id": emoji_id, "name": name, "animated": parts[0] == "a" and len(parts) == 3}
    if not raw or raw.isascii():
        raise _ApiError(400, 10014, "Unknown Emoji")
    return {"id": None, "name": raw}


class FakeDiscord:
    """Discord's REST API and gateway on ``127.0.0.1`` (free port) for the life of ``async with``.

    Recording: every REST request lands in ``calls`` and ``requests`` (in arrival order, with
    the status it got, 429s included); every frame the client sends on the gateway lands in
    ``gateway_frames`` and ``gateway_received``; frames a RESUME replayed land in
    ``replayed``. ``rate_limited_count`` counts 429s served. Downloads of attachment URLs
    (``/attachments/…``, Discord's CDN) are served but not recorded.

    Test controls that dispatch (``send_message``, ``send_interaction``, ``click_button``)
    need a live or resumable session: they raise RuntimeError before the client has
    identified. While the client is disconnected their dispatches are logged and replayed on
    RESUME.

    ``route_limits`` maps a route (``Route.key`` form) to ``(requests, window_s)``: that route
    advertises the limit per bucket (route and major parameter, e.g. one channel) and answers
    429 to a request beyond it, with ``retry_after`` the rest of the window, as Discord does
    (observed: 5 message creates per 5 s in a channel). Other routes keep the generous limit.
    """

    def __init__(
        self,
        *,
        heartbeat_interval_ms: int = _DEFAULT_HEARTBEAT_INTERVAL_MS,
        route_limits: Mapping[str, tuple[int, float]] | None = None,
    ) -> None:
        if heartbeat_interval_ms <= 0:
            raise ValueError(f"heartbeat_interval_ms must be > 0, got {heartbeat_interval_ms}")
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self.requests: asyncio.Queue[RecordedCall] = asyncio.Queue()
        self.calls: list[RecordedCall] = []
        self.gateway_received: asyncio.Queue[GatewayFrame] = asyncio.Queue()
        self.gateway_frames: list[GatewayFrame] = []
        self.replayed: list[_Json] = []
        self.rate_limited_count = 0
        # Whether the Developer Portal's Message Content switch is on (application flags).
        self.message_content_intent = True

        self._ids = _Snowflakes()
        self._connection_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._origin: str | None = None
        self._is_used = False
        self._routes = self._build_routes()
        self._route_limits = dict(route_limits or {})
        for route, (limit, window_s) in self._route_limits.items():
            self._check_route(route)
            if limit < 1 or window_s <= 0:
                raise ValueError(f"route_limits[{route!r}] needs requests >= 1 and window_s > 0")

        self._sessions: dict[str, _Session] = {}
        self._session: _Session | None = None  # the most recently identified session
        self._connections: set[_Connection] = set()
        self._close_next_identify: int | None = None

        self._rate_limit_rules: list[_RateLimitRule] = []
        self._buckets: dict[tuple[str, str], _Bucket] = {}

        self._users: dict[int, _Json] = {
            BOT_USER_ID: _user(BOT_USER_ID, BOT_USERNAME, is_bot=True),
            ALICE_ID: _user(ALICE_ID, "alice"),
            BOB_ID: _user(BOB_ID, "bob"),
        }
        self._member_roles: dict[int, list[int]] = {
            BOT_USER_ID: [BOT_ROLE_ID],
            ALICE_ID: [OPERATOR_ROLE_ID],
            BOB_ID: [],
        }
        self._roles: dict[int, _Json] = {
            GUILD_ID: _role(GUILD_ID, "@everyone", 0, _PERMS_EVERYONE),
            OPERATOR_ROLE_ID: _role(OPERATOR_ROLE_ID, "operators", 1, _PERMS_MODERATOR),
            BOT_ROLE_ID: _role(
                BOT_ROLE_ID,
                BOT_USERNAME,
                2,
                _PERMS_MODERATOR,
                managed=True,
                tags={"bot_id": str(BOT_USER_ID)},
            ),
        }
        self._channels: dict[int, _Json] = {
            CHANNEL_ID: _text_channel(CHANNEL_ID, "concordia", 0),
            OTHER_CHANNEL_ID: _text_channel(OTHER_CHANNEL_ID, "general", 1),
        }
        self._dm_channels: dict[int, int] = {}  # user id -> their DM channel with the bot
        self._messages: dict[int, _StoredMessage] = {}
        self._channel_messages: dict[int, list[int]] = {}
        self._nonces: dict[tuple[int, str], tuple[int, float]] = {}
        self._attachments: dict[int, tuple[bytes, str]] = {}
        self._commands: dict[int | None, list[_Json]] = {}
        self._interactions: dict[int, _Interaction] = {}
        self._interaction_ids_by_token: dict[str, int] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._is_used:
            raise RuntimeError("a FakeDiscord cannot be started twice; make a new one")
        self._is_used = True
        app = web.Application(client_max_size=_CLIENT_MAX_BYTES)
        app.router.add_get(_GATEWAY_PATH, self._gateway)
        app.router.add_get(_RESUME_GATEWAY_PATH, self._gateway)
        app.router.add_get(_CDN_PREFIX + "/{channel_id}/{attachment_id}/{filename}", self._cdn)
        app.router.add_route("*", _API_PREFIX + "/{tail:.*}", self._api)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = await serve_on_loopback(app, shutdown_timeout_s=_SHUTDOWN_TIMEOUT_S)
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._origin = f"{host}:{port}"
        log.debug("fake Discord listening on %s", self._origin)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close every gateway socket (1001), then the listener; idempotent."""
        runner, self._runner = self._runner, None
        self._origin = None
        for conn in list(self._connections):
            await conn.close(1001)
        if runner is not None:
            await runner.cleanup()

    @property
    def api_base(self) -> str:
        """``http://127.0.0.1:PORT/api/v10``, the value for ``discord.http.Route.BASE``."""
        return f"http://{self._require_origin()}{_API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        """``ws://127.0.0.1:PORT/gateway``, for ``DiscordWebSocket.DEFAULT_GATEWAY``."""
        return f"ws://{self._require_origin()}{_GATEWAY_PATH}"

    @property
    def resume_gateway_url(self) -> str:
        """What READY hands out as ``resume_gateway_url`` (a different path from the default)."""
        return f"ws://{self._require_origin()}{_RESUME_GATEWAY_PATH}"

    @property
    def session_id(self) -> str | None:
        """The session the client last identified with, or None before the first IDENTIFY."""
        return None if self._session is None else self._session.session_id

    def _require_origin(self) -> str:
        if self._origin is None:
            raise RuntimeError(
                "FakeDiscord is not running; use it as `async with FakeDiscord() as fake:`"
            )
        return self._origin

    # -- what tests read -------------------------------------------------------------------

    def messages(self, channel_id: int) -> list[_Json]:
        """Messages in a channel or thread, oldest first, as Discord would return them now.

        Each is a copy with two extra keys: ``content_history``, every content the message
        has had, oldest first (so ``[-1]`` is the current content), and
        ``allowed_mentions_history``, the ``allowed_mentions`` sent with its create and each
        edit (None where none was sent). Deleted and ephemeral messages are left out; see
        `interaction_messages` for ephemeral ones.
        """
        return [
            self._snapshot(stored)
            for message_id in self._channel_messages.get(channel_id, [])
            if not (stored := self._messages[message_id]).is_deleted
        ]

    def interaction_messages(self, interaction_id: int) -> list[_Json]:
        """The response and followups of an interaction (ephemeral ones too), oldest first."""
        interaction = self._interactions[interaction_id]
        return [self._snapshot(self._messages[mid]) for mid in interaction.message_ids]

    def commands(self, guild_id: int | None = None) -> list[_Json]:
        """Application commands as last bulk-overwritten: global, or for ``guild_id``."""
        return copy.deepcopy(self._commands.get(guild_id, []))

    def channel(self, channel_id: int) -> _Json:
        """A copy of a channel or thread object; KeyError for an unknown id."""
        return copy.deepcopy(self._channels[channel_id])

    async def next_request(self, route: str) -> RecordedCall:
        """Take calls from ``requests`` until one matches ``route`` (a ``RecordedCall.route``).

        Calls before the match are consumed; ``calls`` keeps them all. Waits forever, so
        wrap it in ``asyncio.timeout``.
        """
        self._check_route(route)
        while True:
            call = await self.requests.get()
            if call.route == route:
                return call

    async def next_gateway_frame(self, op: int) -> GatewayFrame:
        """Take frames from ``gateway_received`` until one has ``op``; consumes the others."""
        while True:
            frame = await self.gateway_received.get()
            if frame.op == op:
                return frame

    # -- fault injection -------------------------------------------------------------------

    def rate_limit(
        self,
        route: str | None = None,
        *,
        retry_after: float = 0.2,
        is_global: bool = False,
        count: int = 1,
    ) -> None:
        """Answer the next ``count`` requests to ``route`` (any route if None) with 429.

        ``route`` is discord.py's ``Route.key`` form, e.g.
        ``"POST /channels/{channel_id}/messages"``; ValueError for one the fake does not
        serve. The 429 has Discord's body ``{"message", "retry_after", "global"}`` and
        headers (``X-RateLimit-*``, ``Retry-After``, ``Via``). Rules queue up in call order.
        """
        if route is not None:
            self._check_route(route)
        if retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, got {retry_after}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self._rate_limit_rules.append(_RateLimitRule(route, retry_after, is_global, count))

    def close_code_next(self, code: int) -> None:
        """Close the next IDENTIFY's socket with ``code`` (4004 bad token, 4014 intents…)."""
        if not 4000 <= code <= 4999:
            raise ValueError(f"gateway close codes are 4000-4999, got {code}")
        self._close_next_identify = code

    async def drop_gateway(self, *, code: int | None = 4000) -> None:
        """Close the live gateway socket: with close frame ``code``, or (None) a TCP abort.

        The session stays resumable; dispatches until the client RESUMEs are logged and
        replayed. RuntimeError when no socket is live.
        """
        session, conn = self._require_live()
        session.conn = None
        if code is None:
            conn.abort()
        else:
            await conn.close(code)

    async def reconnect_request(self) -> None:
        """Send op 7 RECONNECT; discord.py closes and RESUMEs on ``resume_gateway_url``."""
        _, conn = self._require_live()
        await conn.send({"op": GatewayOp.RECONNECT, "d": None, "s": None, "t": None})

    async def invalidate_session(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION with ``d = resumable``; False ends the session."""
        session, conn = self._require_live()
        if not resumable:
            session.is_valid = False
        await conn.send({"op": GatewayOp.INVALID_SESSION, "d": resumable, "s": None, "t": None})

    async def redeliver_last_dispatch(self) -> _Json:
        """Send the session's last dispatch again, same ``s`` (Discord is at-least-once)."""
        session, conn = self._require_live()
        if not session.log:
            raise RuntimeError("nothing has been dispatched on this session yet")
        async with session.lock:
            frame = session.log[-1]
            await conn.send(frame)
        return copy.deepcopy(frame)

    # -- events from users -----------------------------------------------------------------

    async def send_message(
        self,
        author_id: int,
        content: str,
        *,
        channel_id: int = CHANNEL_ID,
        mentions_bot: bool = True,
        attachments: Sequence[tuple[str, bytes]] = (),
        message_id: int | None = None,
    ) -> _Json:
        """A member posts ``content``: store it and dispatch MESSAGE_CREATE; return the message.

        With ``mentions_bot`` the content starts with ``<@BOT_USER_ID> `` (added unless it
        already mentions the bot), as a typed @mention does; ``mentions`` is derived from the
        content like Discord does. ``attachments`` are ``(filename, bytes)``; their ``url``
        serves the bytes. Raises ValueError for an unknown author or channel and
        RuntimeError before the client has identified.
        """
        session = self._require_session()
        if author_id not in self._users:
            raise ValueError(f"author_id {author_id} is not a member of the fake guild")
        if channel_id not in self._channels:
            raise ValueError(f"channel_id {channel_id} is not a channel of the fake guild")
        if message_id is not None and message_id in self._messages:
            raise ValueError(f"message_id {message_id} is already used")
        bot_mention = f"<@{BOT_USER_ID}>"
        if mentions_bot and not re.search(rf"<@!?{BOT_USER_ID}>", content):
            content = f"{bot_mention} {content}"
        new_id = message_id if message_id is not None else self._ids.next()
        mentions, roles, everyone = self._resolve_mentions(content, None, None)
        payload = self._new_message(
            new_id,
            channel_id,
            author_id,
            content,
            mentions=mentions,
            mention_roles=roles,
            mention_everyone=everyone,
            attachments=[
                self._store_attachment(channel_id, name, data) for name, data in attachments
            ],
        )
        self._store_message(payload)
        await self._dispatch_message(session, "MESSAGE_CREATE", payload)
        return copy.deepcopy(payload)

    async def send_interaction(
        self,
        user_id: int,
        command: str = "concordia",
        subcommand: str | None = "status",
        options: Mapping[str, str | int | float | bool] | None = None,
        *,
        channel_id: int = CHANNEL_ID,
    ) -> _Json:
        """A member runs ``/command subcommand options…``: dispatch INTERACTION_CREATE.

        The command must have been registered (``tree.sync()``), guild commands first, and
        the options must exist on it (ValueError otherwise), because Discord only sends
        commands it knows. Returns the interaction payload; answer it within 3 s.
        """
        session = self._require_session()
        if user_id not in self._users:
            raise ValueError(f"user_id {user_id} is not a member of the fake guild")
        if channel_id not in self._channels:
            raise ValueError(f"channel_id {channel_id} is not a channel of the fake guild")
        registered = self._find_command(command)
        given = dict(options or {})
        option_defs = registered.get("options") or []
        if subcommand is not None:
            sub = next(
                (
                    o
                    for o in option_defs
                    if o.get("type") == _SUBCOMMAND and o["name"] == subcommand
                ),
                None,
            )
            if sub is None:
                raise ValueError(f"/{command} has no subcommand {subcommand!r}")
            option_defs = sub.get("options") or []
        leaf = _leaf_options(f"/{command} {subcommand or ''}".strip(), option_defs, given)
        data_options = (
            [{"type": _SUBCOMMAND, "name": subcommand, "options": leaf}]
            if subcommand is not None
            else leaf
        )
        data: _Json = {
            "id": registered["id"],
            "name": command,
            "type": 1,
            "options": data_options,
        }
        if "guild_id" in registered:
            data["guild_id"] = registered["guild_id"]
        name = f"{command} {subcommand}" if subcommand else command
        payload = self._interaction_payload(
            _INTERACTION_APPLICATION_COMMAND, data, user_id, channel_id
        )
        return await self._start_interaction(session, payload, name)

    async def click_button(self, user_id: int, message_id: int, custom_id: str) -> _Json:
        """A member clicks the button ``custom_id`` on a message: dispatch INTERACTION_CREATE.

        The interaction is type 3 (MESSAGE_COMPONENT) with ``data`` ``{custom_id,
        component_type: 2, id}`` and the whole ``message``, in the message's channel. Raises
        ValueError for an unknown user or message, a message in a DM, and a button the message
        does not show now or that is disabled, because the Discord client cannot click those.
        Returns the interaction payload; answer it within 3 s.
        """
        session = self._require_session()
        if user_id not in self._users:
            raise ValueError(f"user_id {user_id} is not a member of the fake guild")
        stored = self._messages.get(message_id)
        if stored is None or stored.is_deleted:
            raise ValueError(f"message {message_id} does not exist (or was deleted)")
        channel_id = int(stored.payload["channel_id"])
        if self._channels[channel_id]["type"] == _CHANNEL_DM:
            raise ValueError("the fake clicks buttons in guild channels only, not in DMs")
        button = next(
            (
                child
                for row in stored.payload["components"]
                for child in row.get("components", [])
                if child.get("type") == _COMPONENT_BUTTON and child.get("custom_id") == custom_id
            ),
            None,
        )
        if button is None:
            shown = [
                child.get("custom_id")
                for row in stored.payload["components"]
                for child in row.get("components", [])
            ]
            raise ValueError(f"message {message_id} shows no button {custom_id!r}; it has {shown}")
        if button.get("disabled"):
            raise ValueError(f"the button {custom_id!r} is disabled")
        data: _Json = {"custom_id": custom_id, "component_type": _COMPONENT_BUTTON}
        if "id" in button:
            data["id"] = button["id"]
        payload = self._interaction_payload(
            _INTERACTION_MESSAGE_COMPONENT, data, user_id, channel_id
        )
        payload["message"] = copy.deepcopy(stored.payload)
        return await self._start_interaction(session, payload, "")

    def _interaction_payload(
        self, interaction_type: int, data: _Json, user_id: int, channel_id: int
    ) -> _Json:
        """An INTERACTION_CREATE payload from ``user_id`` in a guild channel or thread."""
        interaction_id = self._ids.next()
        token = (
            base64.urlsafe_b64encode(
                f"interaction:{interaction_id}:{secrets.token_urlsafe(48)}".encode()
            )
            .decode()
            .rstrip("=")
        )
        channel = self._channels[channel_id]
        return {
            "id": str(interaction_id),
            "application_id": str(APPLICATION_ID),
            "type": interaction_type,
            "data": data,
            "guild": {"id": str(GUILD_ID), "locale": "en-US", "features": []},
            "guild_id": str(GUILD_ID),
            "channel": {**channel, "permissions": str(self._permissions(user_id))},
            "channel_id": str(channel_id),
            "member": {
                **self._member(user_id, with_user=True),
                "permissions": str(self._permissions(user_id)),
            },
            "token": token,
            "version": 1,
            "app_permissions": str(self._permissions(BOT_USER_ID)),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(GUILD_ID)},
            "context": 0,
            "attachment_size_limit": _ATTACHMENT_SIZE_LIMIT,
        }

    async def _start_interaction(self, session: _Session, payload: _Json, name: str) -> _Json:
        interaction_id = int(payload["id"])
        self._interactions[interaction_id] = _Interaction(payload, time.monotonic(), name)
        self._interaction_ids_by_token[payload["token"]] = interaction_id
        await self._dispatch(session, "INTERACTION_CREATE", payload)
        return copy.deepcopy(payload)

    # -- gateway ---------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        encoding = request.query.get("encoding", "json")
        if encoding != "json":
            return _json_response(
                400, {"message": f"the fake gateway serves encoding=json, not {encoding}"}
            )
        try:
            compressor = _make_compressor(request.query.get("compress"))
        except ValueError as exc:
            return _json_response(400, {"message": str(exc), "code": 0})
        # Discord does not negotiate permessage-deflate; neither does the fake.
        ws = web.WebSocketResponse(compress=False, timeout=_WS_CLOSE_TIMEOUT_S)
        await ws.prepare(request)
        conn = _Connection(next(self._connection_ids), ws, request, request.path, compressor)
        self._connections.add(conn)
        log.debug("gateway connection %d opened on %s", conn.connection_id, request.path_qs)
        try:
            if request.query.get("v") != _GATEWAY_VERSION:
                await conn.close(4012)
                return ws
            hello = {"heartbeat_interval": self._heartbeat_interval_ms, "_trace": ["fake-gw"]}
            await conn.send({"op": GatewayOp.HELLO, "d": hello, "s": None, "t": None})
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    await conn.close(4002)  # the fake, like discord.py, sends/reads JSON text
                    break
                try:
                    frame = json.loads(msg.data)
                    op = int(frame["op"])
                except (ValueError, TypeError, KeyError):
                    await conn.close(4002)
                    break
                await self._on_frame(conn, op, frame.get("d"))
        finally:
            self._connections.discard(conn)
            self._on_disconnect(conn)
        return ws

    def _on_disconnect(self, conn: _Connection) -> None:
        session = conn.session
        if session is None:
            return
        if session.conn is conn:
            session.conn = None
        if not conn.is_closed_by_fake and conn.ws.close_code in _CLIENT_ENDS_SESSION:
            session.is_valid = False
        log.debug("gateway connection %d closed (code %s)", conn.connection_id, conn.ws.close_code)

    async def _on_frame(self, conn: _Connection, op: int, d: Any) -> None:
        recorded = GatewayFrame(op, d, conn.connection_id, conn.path)
        self.gateway_frames.append(recorded)
        self.gateway_received.put_nowait(recorded)
        if op == GatewayOp.HEARTBEAT:
            await conn.send({"op": GatewayOp.HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == GatewayOp.IDENTIFY:
            await self._identify(conn, d)
        elif op == GatewayOp.RESUME:
            await self._resume(conn, d)
        elif op in (
            GatewayOp.PRESENCE_UPDATE,
            GatewayOp.VOICE_STATE_UPDATE,
            GatewayOp.REQUEST_GUILD_MEMBERS,
        ):
            if conn.session is None:
                await conn.close(4003)
            elif op == GatewayOp.REQUEST_GUILD_MEMBERS:
                await self._member_chunk(conn.session, d)
        else:
            await conn.close(4001)

    async def _identify(self, conn: _Connection, d: Any) -> None:
        if conn.session is not None:
            await conn.close(4005)
            return
        if self._close_next_identify is not None:
            code, self._close_next_identify = self._close_next_identify, None
            await conn.close(code)
            return
        if not isinstance(d, dict) or d.get("token") != TOKEN:
            await conn.close(4004)
            return
        intents = d.get("intents")
        if not isinstance(intents, int) or intents & ~_ALL_INTENTS:
            await conn.close(4013)
            return
        session = _Session(uuid.uuid4().hex, intents, d.get("shard"))
        self._sessions[session.session_id] = session
        self._session = session
        session.conn = conn
        conn.session = session
        ready: _Json = {
            "v": int(_GATEWAY_VERSION),
            "user": self._me(),
            "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": str(APPLICATION_ID), "flags": self._application_flags()},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["fake"],
            "user_settings": {},
            "auth": {},
            "_trace": ["fake-gw"],
        }
        if session.shard is not None:
            ready["shard"] = session.shard
        await self._dispatch(session, "READY", ready)
        await self._dispatch(session, "GUILD_CREATE", self._guild(session), _INTENT_GUILDS)

    async def _resume(self, conn: _Connection, d: Any) -> None:
        if conn.session is not None:
            await conn.close(4005)
            return
        d = d if isinstance(d, dict) else {}
        session = self._sessions.get(str(d.get("session_id")))
        if session is None or not session.is_valid or d.get("token") != TOKEN:
            await conn.send({"op": GatewayOp.INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        seen = d.get("seq") or 0
        async with session.lock:
            if session.conn is not None and session.conn is not conn:
                await session.conn.close(4000)  # a session lives on one socket at a time
            session.conn = conn
            conn.session = session
            for frame in session.log:
                if frame["s"] > seen:
                    self.replayed.append(frame)
                    await conn.send(frame)
            session.seq += 1
            resumed = {
                "op": GatewayOp.DISPATCH,
                "d": {"_trace": ["fake-gw"]},
                "s": session.seq,
                "t": "RESUMED",
            }
            session.log.append(resumed)
            await conn.send(resumed)

    async def _member_chunk(self, session: _Session, d: Any) -> None:
        d = d if isinstance(d, dict) else {}
        wanted = {int(u) for u in d.get("user_ids") or []}
        query = str(d.get("query") or "")
        members = [
            self._member(uid, with_user=True)
            for uid, user in self._users.items()
            if (not wanted or uid in wanted) and user["username"].startswith(query)
        ]
        chunk: _Json = {
            "guild_id": str(GUILD_ID),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if d.get("nonce") is not None:
            chunk["nonce"] = d["nonce"]
        await self._dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    async def _dispatch(
        self, session: _Session, event: str, data: _Json, intent: int | None = None
    ) -> _Json | None:
        """Sequence, log and (if a socket is live) send one dispatch; None if filtered.

        A dispatch the session's intents exclude is never sequenced, as on Discord.
        """
        if not session.is_valid or (intent is not None and not session.intents & intent):
            return None
        async with session.lock:
            session.seq += 1
            frame = {"op": GatewayOp.DISPATCH, "d": data, "s": session.seq, "t": event}
            session.log.append(frame)
            if session.conn is not None:
                await session.conn.send(frame)
        return frame

    async def _dispatch_message(self, session: _Session | None, event: str, payload: _Json) -> None:
        """MESSAGE_CREATE/UPDATE as the gateway sends it: guild_id, member, intent-filtered."""
        if session is None:
            return
        data = copy.deepcopy(payload)
        if self._channels[int(data["channel_id"])]["type"] == _CHANNEL_DM:
            await self._dispatch(session, event, data, _INTENT_DIRECT_MESSAGES)
            return
        data["guild_id"] = str(GUILD_ID)
        author_id = int(data["author"]["id"])
        if author_id in self._member_roles:
            data["member"] = self._member(author_id)
        data["mentions"] = [
            {**user, "member": self._member(int(user["id"]))} for user in data["mentions"]
        ]
        is_mentioned = any(int(u["id"]) == BOT_USER_ID for u in data["mentions"])
        if (
            not session.intents & _INTENT_MESSAGE_CONTENT
            and author_id != BOT_USER_ID
            and not is_mentioned
        ):
            data |= {"content": "", "embeds": [], "attachments": [], "components": []}
        await self._dispatch(session, event, data, _INTENT_GUILD_MESSAGES)

    def _live_session(self) -> _Session | None:
        session = self._session
        return session if session is not None and session.is_valid else None

    def _require_session(self) -> _Session:
        session = self._live_session()
        if session is None:
            raise RuntimeError(
                "no gateway session: start the client and wait for on_ready first "
                "(or for it to re-IDENTIFY after invalidate_session)"
            )
        return session

    def _require_live(self) -> tuple[_Session, _Connection]:
        session = self._require_session()
        if session.conn is None:
            raise RuntimeError("no live gateway connection: the client is not connected now")
        return session, session.conn

    # -- REST plumbing ---------------------------------------------------------------------

    def _build_routes(self) -> list[_Route]:
        webhook_message = "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}"
        message = "/channels/{channel_id}/messages/{message_id}"
        return [
            _route("GET", "/users/@me", self._get_me),
            _route("POST", "/users/@me/channels", self._post_dm_channel),
            _route("GET", "/oauth2/applications/@me", self._get_application),
            _route("GET", "/gateway", self._get_gateway),
            _route("GET", "/gateway/bot", self._get_gateway_bot),
            _route("GET", "/applications/{application_id}/commands", self._get_commands),
            _route("PUT", "/applications/{application_id}/commands", self._put_commands),
            _route(
                "GET",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._get_commands,
            ),
            _route(
                "PUT",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._put_commands,
            ),
            _route("GET", "/channels/{channel_id}", self._get_channel),
            _route("GET", "/channels/{channel_id}/messages", self._get_history),
            _route("POST", "/channels/{channel_id}/messages", self._post_message),
            _route("POST", "/channels/{channel_id}/typing", self._post_typing),
            _route("GET", message, self._get_message),
            _route("PATCH", message, self._patch_message),
            _route("DELETE", message, self._delete_message),
            _route("POST", message + "/threads", self._post_thread),
            _route("PUT", message + "/reactions/{emoji}/@me", self._put_reaction),
            _route(
                "POST",
                "/interactions/{webhook_id}/{webhook_token}/callback",
                self._post_interaction_callback,
            ),
            _route("POST", "/webhooks/{webhook_id}/{webhook_token}", self._post_followup),
            _route("GET", webhook_message, self._get_webhook_message),
            _route("PATCH", webhook_message, self._patch_webhook_message),
        ]

    def _check_route(self, route: str) -> None:
        known = {r.key for r in self._routes}
        if route not in known:
            raise ValueError(
                f"the fake serves no route {route!r}; use a discord.py Route.key such as "
                f"'POST /channels/{{channel_id}}/messages'. Known: {sorted(known)}"
            )

    def _match(
        self, method: str, segments: list[str]
    ) -> tuple[_Route | None, dict[str, str], bool]:
        """The route for a request, its path parameters, and whether the path exists at all."""
        path_exists = False
        for route in self._routes:
            if len(route.segments) != len(segments):
                continue
            params: dict[str, str] = {}
            for pattern, actual in zip(route.segments, segments, strict=True):
                if pattern.startswith("{"):
                    if not actual:
                        break
                    params[pattern[1:-1]] = actual
                elif pattern != actual:
                    break
            else:
                path_exists = True
                if route.method == method:
                    return route, params, True
        return None, {}, path_exists

    async def _api(self, request: web.Request) -> web.StreamResponse:
        arrived_at_s = time.monotonic()
        raw_path = request.rel_url.raw_path[len(_API_PREFIX) :] or "/"
        segments = [unquote(s) for s in raw_path.split("/")[1:]]
        route, params, path_exists = self._match(request.method, segments)
        try:
            body, files = await _read_body(request)
            is_body_ok = True
        except ValueError:
            body, files, is_body_ok = None, (), False
        headers: dict[str, str] = {}
        if route is None:
            status = 405 if path_exists else 404
            reply = _Reply(status, {"message": f"{status}: {_REASONS[status]}", "code": 0})
        elif route.needs_auth and request.headers.get("Authorization") != f"Bot {TOKEN}":
            reply = _Reply(401, {"message": "401: Unauthorized", "code": 0})
        elif not is_body_ok:
            reply = _Reply(
                400, {"message": "The request body contains invalid JSON.", "code": 50109}
            )
        elif (rule := self._take_rate_limit(route)) is not None:
            reply, headers = self._rate_limited(route, params, rule)
        elif (wait_s := self._bucket_wait_s(route, params)) > 0:
            rule = _RateLimitRule(route.key, wait_s, is_global=False, remaining=1)
            reply, headers = self._rate_limited(route, params, rule)
        else:
            try:
                reply = await route.handler(_Call(params, body, files, request.query))
            except _ApiError as exc:
                reply = _Reply(exc.status, exc.body)
            headers = self._bucket_headers(route, params)
        call = RecordedCall(
            method=request.method,
            path="/" + "/".join(segments),
            route="" if route is None else route.key,
            json=body,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            query=dict(request.query),
            status=reply.status,
            files=files,
            arrived_at_s=arrived_at_s,
        )
        self.calls.append(call)
        self.requests.put_nowait(call)
        log.debug("fake Discord %s %s -> %d", call.method, call.path, call.status)
        if reply.body is None:
            return web.Response(status=reply.status, headers={"Via": "1.1 google", **headers})
        return _json_response(reply.status, reply.body, headers)

    async def _not_found(self, request: web.Request) -> web.Response:
        return _json_response(404, {"message": "404: Not Found", "code": 0})

    async def _cdn(self, request: web.Request) -> web.Response:
        try:
            data, content_type = self._attachments[int(request.match_info["attachment_id"])]
        except (KeyError, ValueError):
            return web.Response(status=404, text="Not Found")
        return web.Response(body=data, headers={"Content-Type": content_type})

    def _take_rate_limit(self, route: _Route) -> _RateLimitRule | None:
        for rule in self._rate_limit_rules:
            if rule.route is None or rule.route == route.key:
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._rate_limit_rules.remove(rule)
                return rule
        return None

    def _rate_limited(
        self, route: _Route, params: dict[str, str], rule: _RateLimitRule
    ) -> tuple[_Reply, dict[str, str]]:
        self.rate_limited_count += 1
        body = {
            "message": "You are being rate limited.",
            "retry_after": rule.retry_after,
            "global": rule.is_global,
        }
        headers = {"Retry-After": str(math.ceil(rule.retry_after))}
        if rule.is_global:
            headers |= {"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global"}
        else:
            headers |= {
                "X-RateLimit-Limit": str(self._limit_of(route)[0]),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + rule.retry_after:.3f}",
                "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
                "X-RateLimit-Bucket": _bucket_hash(route),
                "X-RateLimit-Scope": "user",
            }
        return _Reply(429, body), headers

    def _limit_of(self, route: _Route) -> tuple[int, float]:
        return self._route_limits.get(route.key, (_BUCKET_LIMIT, _BUCKET_WINDOW_S))

    def _bucket_key(self, route: _Route, params: dict[str, str]) -> tuple[str, str]:
        major = params.get(route.bucket_param, "") if route.bucket_param else ""
        return route.key, major

    def _bucket_wait_s(self, route: _Route, params: dict[str, str]) -> float:
        """Seconds until an enforced bucket (``route_limits``) has room; 0 if it has now."""
        if route.key not in self._route_limits:
            return 0.0
        limit, window_s = self._limit_of(route)
        bucket = self._buckets.get(self._bucket_key(route, params))
        if bucket is None or bucket.used < limit:
            return 0.0
        return max(0.0, window_s - (time.monotonic() - bucket.window_start_s))

    def _bucket_headers(self, route: _Route, params: dict[str, str]) -> dict[str, str]:
        limit, window_s = self._limit_of(route)
        key = self._bucket_key(route, params)
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None or now - bucket.window_start_s >= window_s:
            bucket = self._buckets[key] = _Bucket(now)
        bucket.used += 1
        reset_after = max(0.0, window_s - (now - bucket.window_start_s))
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - bucket.used)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": _bucket_hash(route),
        }

    # -- REST: identity and discovery ------------------------------------------------------

    async def _get_me(self, call: _Call) -> _Reply:
        return _Reply(200, self._me())

    async def _post_dm_channel(self, call: _Call) -> _Reply:
        body = _require_object(call.body)
        try:
            recipient_id = int(body["recipient_id"])
        except (KeyError, TypeError, ValueError):
            raise _ApiError.invalid_form(
                ("recipient_id",), "BASE_TYPE_REQUIRED", "This field is required"
            ) from None
        if recipient_id not in self._users:
            raise _ApiError(404, 10013, "Unknown User")
        if recipient_id == BOT_USER_ID:
            raise _ApiError(400, 50007, "Cannot send messages to this user")
        channel_id = self._dm_channels.get(recipient_id)
        if channel_id is None:
            channel_id = self._dm_channels[recipient_id] = self._ids.next()
            self._channels[channel_id] = {
                "id": str(channel_id),
                "type": _CHANNEL_DM,
                "last_message_id": None,
                "flags": 0,
                "recipients": [self._users[recipient_id]],
            }
        return _Reply(200, self._channels[channel_id])

    async def _get_application(self, call: _Call) -> _Reply:
        return _Reply(
            200,
            {
                "id": str(APPLICATION_ID),
                "name": BOT_USERNAME,
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "hook": True,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": hashlib.sha256(b"concordia-fake").hexdigest(),
                "flags": self._application_flags(),
                "owner": self._users[ALICE_ID],
                "team": None,
                "bot": self._users[BOT_USER_ID],
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "role_connections_verification_url": None,
                "tags": [],
                "approximate_guild_count": 1,
                "integration_types_config": {"0": {}},
            },
        )

    async def _get_gateway(self, call: _Call) -> _Reply:
        return _Reply(200, {"url": self.gateway_url})

    async def _get_gateway_bot(self, call: _Call) -> _Reply:
        limit = {"total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1}
        return _Reply(200, {"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    # -- REST: application commands --------------------------------------------------------

    def _command_scope(self, call: _Call) -> int | None:
        if call.params["application_id"] != str(APPLICATION_ID):
            raise _ApiError(403, 50001, "Missing Access")
        if "guild_id" not in call.params:
            return None
        if call.params["guild_id"] != str(GUILD_ID):
            raise _ApiError(403, 50001, "Missing Access")
        return GUILD_ID

    async def _get_commands(self, call: _Call) -> _Reply:
        return _Reply(200, self._commands.get(self._command_scope(call), []))

    async def _put_commands(self, call: _Call) -> _Reply:
        guild_id = self._command_scope(call)
        if not isinstance(call.body, list):
            raise _ApiError.invalid_form((), "BASE_TYPE_ARRAY", "Must be an array.")
        old_ids = {(c["type"], c["name"]): c["id"] for c in self._commands.get(guild_id, [])}
        version = str(self._ids.next())
        stored: list[_Json] = []
        for index, given in enumerate(call.body):
            command_type, name = _validate_command(str(index), given)
            command: _Json = {
                "id": old_ids.get((command_type, name)) or str(self._ids.next()),
                "application_id": str(APPLICATION_ID),
                "version": version,
                "type": command_type,
                "name": name,
                "name_localizations": given.get("name_localizations"),
                "description": given.get("description", ""),
                "description_localizations": given.get("description_localizations"),
                "options": given.get("options") or [],
                "default_member_permissions": given.get("default_member_permissions"),
                "dm_permission": given.get("dm_permission", True),
                "contexts": given.get("contexts"),
                "integration_types": given.get("integration_types") or [0],
                "nsfw": bool(given.get("nsfw", False)),
            }
            if guild_id is not None:
                command["guild_id"] = str(guild_id)
            stored.append(command)
        self._commands[guild_id] = stored
        return _Reply(200, stored)

    # -- REST: channels and messages -------------------------------------------------------

    def _channel_for(self, call: _Call) -> int:
        try:
            channel_id = int(call.params["channel_id"])
        except ValueError:
            raise _ApiError(404, 10003, "Unknown Channel") from None
        if channel_id not in self._channels:
            raise _ApiError(404, 10003, "Unknown Channel")
        return channel_id

    def _message_for(self, call: _Call, channel_id: int) -> _StoredMessage:
        try:
            stored = self._messages[int(call.params["message_id"])]
        except (KeyError, ValueError):
            raise _ApiError(404, 10008, "Unknown Message") from None
        if (
            stored.is_deleted
            or stored.is_ephemeral
            or stored.payload["channel_id"] != str(channel_id)
        ):
            raise _ApiError(404, 10008, "Unknown Message")
        return stored

    async def _get_channel(self, call: _Call) -> _Reply:
        return _Reply(200, self._channels[self._channel_for(call)])

    async def _get_history(self, call: _Call) -> _Reply:
        channel_id = self._channel_for(call)
        try:
            limit = int(call.query.get("limit", _DEFAULT_HISTORY_LIMIT))
            before = int(call.query.get("before", 0)) or None
            after = int(call.query.get("after", 0))
        except ValueError:
            raise _ApiError.invalid_form(
                ("limit",), "NUMBER_TYPE_COERCE", "Not a number."
            ) from None
        if not 1 <= limit <= _MAX_HISTORY_LIMIT:
            raise _ApiError.invalid_form(
                ("limit",), "NUMBER_TYPE_MAX", f"Must be between 1 and {_MAX_HISTORY_LIMIT}."
            )
        ids = [
            mid
            for mid in self._channel_messages.get(channel_id, [])
            if not self._messages[mid].is_deleted
            and mid > after
            and (before is None or mid < before)
        ]
        newest_first = sorted(ids, reverse=True)[:limit]
        return _Reply(200, [self._messages[mid].payload for mid in newest_first])

    async def _post_typing(self, call: _Call) -> _Reply:
        self._channel_for(call)
        return _Reply(204)

    async def _get_message(self, call: _Call) -> _Reply:
        return _Reply(200, self._message_for(call, self._channel_for(call)).payload)

    async def _post_message(self, call: _Call) -> _Reply:
        channel_id = self._channel_for(call)
        body = _require_object(call.body)
        nonce = body.get("nonce")
        if nonce is not None:
            if not isinstance(nonce, str | int) or len(str(nonce)) > _MAX_NONCE_CHARS:
                raise _ApiError.invalid_form(
                    ("nonce",), "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            nonce_key = (BOT_USER_ID, str(nonce))
            earlier = self._nonces.get(nonce_key)
            if (
                body.get("enforce_nonce")
                and earlier is not None
                and time.monotonic() - earlier[1] < _NONCE_WINDOW_S
            ):
                return _Reply(200, self._messages[earlier[0]].payload)
        _check_flags(body.get("flags"), _CREATE_FLAGS, ())
        _check_content_and_embeds(body, ())
        components = _checked_components(body.get("components"), ())
        attachments = self._uploaded_attachments(channel_id, body, call.files)
        if not (
            body.get("content")
            or body.get("embeds")
            or attachments
            or body.get("sticker_ids")
            or components
            or body.get("poll")
        ):
            raise _ApiError(400, 50006, "Cannot send an empty message")
        referenced = self._referenced(channel_id, body.get("message_reference"))
        replied_author = None if referenced is None else int(referenced["author"]["id"])
        content = body.get("content") or ""
        mentions, roles, everyone = self._resolve_mentions(
            content, body.get("allowed_mentions"), replied_author
        )
        extra: _Json = {}
        if referenced is not None:
            extra["message_reference"] = {
                "type": 0,
                "channel_id": referenced["channel_id"],
                "message_id": referenced["id"],
                "guild_id": str(GUILD_ID),
            }
            extra["referenced_message"] = referenced
        if nonce is not None:
            extra["nonce"] = nonce
        payload = self._new_message(
            self._ids.next(),
            channel_id,
            BOT_USER_ID,
            content,
            msg_type=_TYPE_REPLY if referenced is not None else _TYPE_DEFAULT,
            flags=int(body.get("flags") or 0),
            embeds=body.get("embeds") or [],
            components=components,
            tts=bool(body.get("tts", False)),
            mentions=mentions,
            mention_roles=roles,
            mention_everyone=everyone,
            attachments=attachments,
            **extra,
        )
        self._store_message(payload, allowed_mentions=body.get("allowed_mentions"))
        if nonce is not None:
            self._nonces[(BOT_USER_ID, str(nonce))] = (int(payload["id"]), time.monotonic())
        await self._dispatch_message(self._live_session(), "MESSAGE_CREATE", payload)
        return _Reply(200, payload)

    async def _patch_message(self, call: _Call) -> _Reply:
        channel_id = self._channel_for(call)
        stored = self._message_for(call, channel_id)
        if int(stored.payload["author"]["id"]) != BOT_USER_ID:
            raise _ApiError(403, 50005, "Cannot edit a message authored by another user")
        body = _require_object(call.body)
        self._edit(stored, body, call.files, ())
        await self._dispatch_message(self._live_session(), "MESSAGE_UPDATE", stored.payload)
        return _Reply(200, stored.payload)

    async def _delete_message(self, call: _Call) -> _Reply:
        channel_id = self._channel_for(call)
        stored = self._message_for(call, channel_id)
        stored.is_deleted = True
        session = self._live_session()
        if session is not None:
            deleted = {"id": stored.payload["id"], "channel_id": str(channel_id)}
            await self._dispatch(
                session,
                "MESSAGE_DELETE",
                deleted | {"guild_id": str(GUILD_ID)},
                _INTENT_GUILD_MESSAGES,
            )
        return _Reply(204)

    async def _post_thread(self, call: _Call) -> _Reply:
        channel_id = self._channel_for(call)
        stored = self._message_for(call, channel_id)
        if self._channels[channel_id]["type"] != _CHANNEL_GUILD_TEXT:
            raise _ApiError(400, 50024, "Cannot execute action on this channel type")
        thread_id = int(stored.payload["id"])  # a thread from a message shares its id
        if thread_id in self._channels:
            raise _ApiError(400, 160004, "A thread has already been created for this message")
        body = _require_object(call.body)
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= _MAX_THREAD_NAME_CHARS:
            raise _ApiError.invalid_form(
                ("name",), "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        archive = body.get("auto_archive_duration") or _DEFAULT_ARCHIVE_MINUTES
        if archive not in _THREAD_ARCHIVE_MINUTES:
            raise _ApiError.invalid_form(
                ("auto_archive_duration",),
                "BASE_TYPE_CHOICES",
                f"Value must be one of {_THREAD_ARCHIVE_MINUTES}.",
            )
        now = _now_iso()
        thread: _Json = {
            "id": str(thread_id),
            "type": _CHANNEL_PUBLIC_THREAD,
            "guild_id": str(GUILD_ID),
            "parent_id": str(channel_id),
            "owner_id": str(BOT_USER_ID),
            "name": name,
            "last_message_id": None,
            "rate_limit_per_user": int(body.get("rate_limit_per_user") or 0),
            "message_count": 0,
            "member_count": 1,
            "total_message_sent": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": archive,
                "archive_timestamp": now,
                "locked": False,
                "create_timestamp": now,
            },
            "member": {
                "id": str(thread_id),
                "user_id": str(BOT_USER_ID),
                "join_timestamp": now,
                "flags": 1,
            },
        }
        self._channels[thread_id] = thread
        stored.payload["thread"] = thread
        session = self._live_session()
        if session is not None:
            await self._dispatch(
                session, "THREAD_CREATE", thread | {"newly_created": True}, _INTENT_GUILDS
            )
        return _Reply(201, thread)

    async def _put_reaction(self, call: _Call) -> _Reply:
        channel_id = self._channel_for(call)
        stored = self._message_for(call, channel_id)
        emoji = _emoji(call.params["emoji"])
        reactions: list[_Json] = stored.payload.setdefault("reactions", [])
        existing = next((r for r in reactions if r["emoji"] == emoji), None)
        if existing is not None and existing["me"]:
            return _Reply(204)  # idempotent, and Discord sends no second event
        if existing is None:
            existing = {
                "count": 0,
                "count_details": {"burst": 0, "normal": 0},
                "me": False,
                "me_burst": False,
                "burst_colors": [],
                "emoji": emoji,
            }
            reactions.append(existing)
        existing["count"] += 1
        existing["count_details"]["normal"] += 1
        existing["me"] = True
        session = self._live_session()
        if session is not None:
            event = {
                "user_id": str(BOT_USER_ID),
                "channel_id": str(channel_id),
                "message_id": stored.payload["id"],
                "guild_id": str(GUILD_ID),
                "member": self._member(BOT_USER_ID, with_user=True),
                "emoji": emoji,
                "message_author_id": stored.payload["author"]["id"],
                "burst": False,
                "burst_colors": [],
                "type": 0,
            }
            await self._dispatch(
                session, "MESSAGE_REACTION_ADD", event, _INTENT_GUILD_MESSAGE_REACTIONS
            )
        return _Reply(204)

    # -- REST: interactions and their webhooks ---------------------------------------------

    async def _post_interaction_callback(self, call: _Call) -> _Reply:
        try:
            interaction_id = int(call.params["webhook_id"])
            interaction = self._interactions[interaction_id]
        except (KeyError, ValueError):
            raise _ApiError(404, 10062, "Unknown interaction") from None
        if interaction.payload["token"] != call.params["webhook_token"]:
            raise _ApiError(404, 10062, "Unknown interaction")
        if interaction.response_type is not None:
            raise _ApiError(400, 40060, "Interaction has already been acknowledged.")
        if time.monotonic() - interaction.created_s > _INTERACTION_ACK_DEADLINE_S:
            raise _ApiError(404, 10062, "Unknown interaction")
        body = _require_object(call.body)
        response_type = body.get("type")
        data = body.get("data") or {}
        if not isinstance(data, dict):
            raise _ApiError.invalid_form(("data",), "MODEL_TYPE_CONVERT", "Only dictionaries.")
        interacted = interaction.interacted_message_id
        payload: _Json | None = None
        flags = 0
        if response_type == _CALLBACK_CHANNEL_MESSAGE:
            _check_flags(data.get("flags"), _INTERACTION_FLAGS, ("data",))
            _check_content_and_embeds(data, ("data",))
            components = _checked_components(data.get("components"), ("data",))
            if not (data.get("content") or data.get("embeds") or components):
                raise _ApiError(400, 50006, "Cannot send an empty message")
            flags = int(data.get("flags") or 0)
            content = data.get("content") or ""
            payload = await self._interaction_message(
                interaction, data | {"components": components}, content, flags
            )
        elif response_type == _CALLBACK_DEFERRED_CHANNEL_MESSAGE:
            _check_flags(data.get("flags"), _FLAG_EPHEMERAL, ("data",))
            flags = int(data.get("flags") or 0) | _FLAG_LOADING
            payload = await self._interaction_message(interaction, data, "", flags)
        elif (
            response_type in (_CALLBACK_DEFERRED_UPDATE_MESSAGE, _CALLBACK_UPDATE_MESSAGE)
            and interacted is not None
        ):
            # Both answer on the message the component is on: 7 edits it now, 6 only acks
            # (a later PATCH of @original edits it).
            stored = self._messages[interacted]
            if response_type == _CALLBACK_UPDATE_MESSAGE:
                self._edit(stored, data, (), ("data",))
                await self._dispatch_interaction_message(stored, "MESSAGE_UPDATE")
                payload = stored.payload
            flags = int(stored.payload["flags"])
        else:
            raise _ApiError.invalid_form(
                ("type",),
                "BASE_TYPE_CHOICES",
                "The fake answers application commands with type 4 or 5, and message "
                "components with type 4, 5, 6 or 7.",
            )
        interaction.response_type = response_type
        interaction.original_id = int(payload["id"]) if payload is not None else interacted
        if call.query.get("with_response") not in ("1", "true", "True"):
            return _Reply(204)
        callback: _Json = {
            "interaction": {
                "id": str(interaction_id),
                "type": interaction.interaction_type,
                "response_message_loading": bool(flags & _FLAG_LOADING),
                "response_message_ephemeral": bool(flags & _FLAG_EPHEMERAL),
            },
        }
        if payload is not None:
            callback["interaction"]["response_message_id"] = payload["id"]
            callback["resource"] = {"type": response_type, "message": payload}
        return _Reply(200, callback)

    def _interaction_for_webhook(self, call: _Call) -> _Interaction:
        interaction_id = self._interaction_ids_by_token.get(call.params["webhook_token"])
        if call.params["webhook_id"] != str(APPLICATION_ID) or interaction_id is None:
            raise _ApiError(404, 10015, "Unknown Webhook")
        interaction = self._interactions[interaction_id]
        if (
            interaction.response_type is None
            or time.monotonic() - interaction.created_s > _INTERACTION_TOKEN_TTL_S
        ):
            raise _ApiError(404, 10015, "Unknown Webhook")
        return interaction

    async def _post_followup(self, call: _Call) -> _Reply:
        interaction = self._interaction_for_webhook(call)
        body = _require_object(call.body)
        _check_flags(body.get("flags"), _INTERACTION_FLAGS, ())
        _check_content_and_embeds(body, ())
        components = _checked_components(body.get("components"), ())
        if not (body.get("content") or body.get("embeds") or call.files or components):
            raise _ApiError(400, 50006, "Cannot send an empty message")
        body = body | {"components": components}
        assert interaction.original_id is not None  # set whenever response_type is
        original = self._messages[interaction.original_id]
        if original.payload["flags"] & _FLAG_LOADING:
            # Discord: the first followup after a deferred response fills the "thinking"
            # message (and keeps its ephemeral flag) instead of posting a new one.
            self._edit(original, body, call.files, ())
            await self._dispatch_interaction_message(original, "MESSAGE_UPDATE")
            payload = original.payload
        else:
            flags = int(body.get("flags") or 0)
            payload = await self._interaction_message(
                interaction, body, body.get("content") or "", flags, files=call.files
            )
        if call.query.get("wait") not in ("1", "true", "True"):
            return _Reply(204)
        return _Reply(200, payload)

    def _webhook_message(self, call: _Call) -> _StoredMessage:
        interaction = self._interaction_for_webhook(call)
        raw = call.params["message_id"]
        if raw == "@original":
            message_id = interaction.original_id
        else:
            message_id = int(raw) if raw.isdigit() else None
        if message_id is None or (
            message_id not in interaction.message_ids and message_id != interaction.original_id
        ):
            raise _ApiError(404, 10008, "Unknown Message")
        stored = self._messages[message_id]
        if stored.is_deleted:
            raise _ApiError(404, 10008, "Unknown Message")
        return stored

    async def _get_webhook_message(self, call: _Call) -> _Reply:
        return _Reply(200, self._webhook_message(call).payload)

    async def _patch_webhook_message(self, call: _Call) -> _Reply:
        stored = self._webhook_message(call)
        body = _require_object(call.body)
        self._edit(stored, body, call.files, ())
        await self._dispatch_interaction_message(stored, "MESSAGE_UPDATE")
        return _Reply(200, stored.payload)

    async def _interaction_message(
        self,
        interaction: _Interaction,
        data: _Json,
        content: str,
        flags: int,
        *,
        files: tuple[tuple[str, bytes], ...] = (),
    ) -> _Json:
        channel_id = int(interaction.payload["channel_id"])
        user = interaction.payload["member"]["user"]
        mentions, roles, everyone = self._resolve_mentions(
            content, data.get("allowed_mentions"), None
        )
        interaction_type = interaction.interaction_type
        metadata: _Json = {
            "id": interaction.payload["id"],
            "type": interaction_type,
            "user": user,
            "authorizing_integration_owners": interaction.payload["authorizing_integration_owners"],
        }
        extra: _Json = {}
        interacted = interaction.interacted_message_id
        if interacted is None:
            metadata |= {"name": interaction.command_name, "command_type": 1}
            msg_type = _TYPE_CHAT_INPUT_COMMAND
        else:
            # An answer to a button shows as a reply to the message the button is on.
            metadata["interacted_message_id"] = str(interacted)
            msg_type = _TYPE_REPLY
            extra["message_reference"] = {
                "type": 0,
                "channel_id": str(channel_id),
                "message_id": str(interacted),
                "guild_id": str(GUILD_ID),
            }
        if interaction.original_id is not None:
            metadata["original_response_message_id"] = str(interaction.original_id)
        payload = self._new_message(
            self._ids.next(),
            channel_id,
            BOT_USER_ID,
            content,
            msg_type=msg_type,
            flags=flags,
            embeds=data.get("embeds") or [],
            components=data.get("components") or [],
            mentions=mentions,
            mention_roles=roles,
            mention_everyone=everyone,
            attachments=self._uploaded_attachments(channel_id, data, files),
            webhook_id=str(APPLICATION_ID),
            application_id=str(APPLICATION_ID),
            interaction_metadata=metadata,
            interaction={
                "id": interaction.payload["id"],
                "type": interaction_type,
                "name": interaction.command_name,
                "user": user,
            },
            **extra,
        )
        stored = self._store_message(
            payload,
            is_ephemeral=bool(flags & _FLAG_EPHEMERAL),
            allowed_mentions=data.get("allowed_mentions"),
        )
        interaction.message_ids.append(int(payload["id"]))
        await self._dispatch_interaction_message(stored, "MESSAGE_CREATE")
        return payload

    async def _dispatch_interaction_message(self, stored: _StoredMessage, event: str) -> None:
        if not stored.is_ephemeral:  # only the invoking user ever sees an ephemeral message
            await self._dispatch_message(self._live_session(), event, stored.payload)

    # -- shared message logic --------------------------------------------------------------

    def _new_message(
        self,
        message_id: int,
        channel_id: int,
        author_id: int,
        content: str,
        *,
        mentions: list[int],
        mention_roles: list[int],
        mention_everyone: bool,
        msg_type: int = _TYPE_DEFAULT,
        flags: int = 0,
        embeds: list[_Json] | None = None,
        components: list[_Json] | None = None,
        attachments: list[_Json] | None = None,
        tts: bool = False,
        **extra: Any,
    ) -> _Json:
        payload: _Json = {
            "id": str(message_id),
            "type": msg_type,
            "channel_id": str(channel_id),
            "author": self._users[author_id],
            "content": content,
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": tts,
            "mention_everyone": mention_everyone,
            "mentions": [self._users[uid] for uid in mentions],
            "mention_roles": [str(rid) for rid in mention_roles],
            "attachments": attachments or [],
            "embeds": embeds or [],
            "pinned": False,
            "flags": flags,
            "components": components or [],
            **extra,
        }
        channel = self._channels[channel_id]
        if channel["type"] == _CHANNEL_PUBLIC_THREAD:
            payload["position"] = channel["total_message_sent"]
        return payload

    def _store_message(
        self, payload: _Json, *, is_ephemeral: bool = False, allowed_mentions: Any = None
    ) -> _StoredMessage:
        stored = _StoredMessage(
            payload,
            [payload["content"]],
            allowed_mentions=[copy.deepcopy(allowed_mentions)],
            is_ephemeral=is_ephemeral,
        )
        message_id = int(payload["id"])
        self._messages[message_id] = stored
        if not is_ephemeral:
            channel_id = int(payload["channel_id"])
            self._channel_messages.setdefault(channel_id, []).append(message_id)
            channel = self._channels[channel_id]
            channel["last_message_id"] = payload["id"]
            if channel["type"] == _CHANNEL_PUBLIC_THREAD:
                channel["message_count"] += 1
                channel["total_message_sent"] += 1
        return stored

    def _edit(
        self,
        stored: _StoredMessage,
        body: _Json,
        files: tuple[tuple[str, bytes], ...],
        where: tuple[str, ...],
    ) -> None:
        """Apply a PATCH body to a stored message (content, embeds, components, flags,
        attachments); ``components: []`` takes every component away."""
        _check_content_and_embeds(body, where)
        payload = stored.payload
        components = payload["components"]
        if "components" in body:
            components = _checked_components(body["components"], where)
        if "flags" in body and body["flags"] is not None:
            # Only SUPPRESS_EMBEDS can be toggled by an edit; other bits stay as they were.
            wanted = int(body["flags"])
            payload["flags"] = (payload["flags"] & ~_FLAG_SUPPRESS_EMBEDS) | (
                wanted & _FLAG_SUPPRESS_EMBEDS
            )
        content = payload["content"]
        if "content" in body:
            content = body["content"] or ""
        embeds = payload["embeds"]
        if "embeds" in body:
            embeds = body["embeds"] or []
        attachments = payload["attachments"]
        if "attachments" in body or files:
            channel_id = int(payload["channel_id"])
            attachments = self._uploaded_attachments(
                channel_id, body, files, payload["attachments"]
            )
        if not (content or embeds or attachments or components):
            raise _ApiError(400, 50006, "Cannot send an empty message")
        if "content" in body:
            stored.history.append(content)
        stored.allowed_mentions.append(copy.deepcopy(body.get("allowed_mentions")))
        mentions, roles, everyone = self._resolve_mentions(
            content, body.get("allowed_mentions"), None
        )
        payload |= {
            "content": content,
            "embeds": embeds,
            "attachments": attachments,
            "mentions": [self._users[uid] for uid in mentions],
            "mention_roles": [str(rid) for rid in roles],
            "mention_everyone": everyone,
            "components": components,
            "edited_timestamp": _now_iso(),
        }
        payload["flags"] &= ~_FLAG_LOADING

    def _referenced(self, channel_id: int, reference: Any) -> _Json | None:
        if reference is None:
            return None
        if not isinstance(reference, dict) or "message_id" not in reference:
            raise _ApiError.invalid_form(
                ("message_reference", "message_id"), "BASE_TYPE_REQUIRED", "This field is required"
            )
        target_channel = int(reference.get("channel_id") or channel_id)
        stored = self._messages.get(int(reference["message_id"]))
        if (
            stored is None
            or stored.is_deleted
            or stored.payload["channel_id"] != str(target_channel)
        ):
            if reference.get("fail_if_not_exists", True):
                raise _ApiError.invalid_form(
                    ("message_reference",), "REPLIES_UNKNOWN_MESSAGE", "Unknown message"
                )
            return None
        return copy.deepcopy(stored.payload)

    def _resolve_mentions(
        self, content: str, allowed: Any, replied_author: int | None
    ) -> tuple[list[int], list[int], bool]:
        """Users, roles and @everyone that ``content`` pings, after ``allowed_mentions``."""
        users = list(dict.fromkeys(int(u) for u in _USER_MENTION.findall(content)))
        users = [u for u in users if u in self._users]
        roles = list(dict.fromkeys(int(r) for r in _ROLE_MENTION.findall(content)))
        roles = [r for r in roles if r in self._roles and r != GUILD_ID]
        everyone = _EVERYONE_MENTION.search(content) is not None
        allowed_users: set[int] = set()
        allowed_roles: set[int] = set()
        if allowed is None:  # no allowed_mentions: Discord pings everything, replies included
            parse, replied = _MENTION_PARSE_KINDS, True
        else:
            parse, allowed_users, allowed_roles, replied = _parse_allowed_mentions(allowed)
        mentioned = [u for u in users if "users" in parse or u in allowed_users]
        if replied_author is not None and replied and replied_author not in mentioned:
            mentioned.append(replied_author)
        return (
            mentioned,
            [r for r in roles if "roles" in parse or r in allowed_roles],
            everyone and "everyone" in parse,
        )

    def _uploaded_attachments(
        self,
        channel_id: int,
        body: _Json,
        files: tuple[tuple[str, bytes], ...],
        existing: list[_Json] | None = None,
    ) -> list[_Json]:
        """Attachment objects for a create/edit: kept ``existing`` ones plus uploaded files."""
        listed = body.get("attachments") or []
        kept_ids = {str(a.get("id")) for a in listed if isinstance(a, dict)}
        kept = [a for a in existing or [] if a["id"] in kept_ids]
        uploaded = [self._store_attachment(channel_id, name, data) for name, data in files]
        return kept + uploaded

    def _store_attachment(self, channel_id: int, filename: str, data: bytes) -> _Json:
        attachment_id = self._ids.next()
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        self._attachments[attachment_id] = (data, content_type)
        url = (
            f"http://{self._require_origin()}{_CDN_PREFIX}/{channel_id}/{attachment_id}/{filename}"
        )
        return {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }

    def _snapshot(self, stored: _StoredMessage) -> _Json:
        snapshot = copy.deepcopy(stored.payload)
        snapshot["content_history"] = list(stored.history)
        snapshot["allowed_mentions_history"] = copy.deepcopy(stored.allowed_mentions)
        return snapshot

    # -- guild model -----------------------------------------------------------------------

    def _me(self) -> _Json:
        return self._users[BOT_USER_ID] | {
            "mfa_enabled": False,
            "locale": "en-US",
            "premium_type": 0,
            "email": None,
            "verified": True,
            "bio": "",
        }

    def _application_flags(self) -> int:
        # GATEWAY_GUILD_MEMBERS_LIMITED | GATEWAY_MESSAGE_CONTENT_LIMITED | COMMAND_BADGE
        content = (1 << 19) if self.message_content_intent else 0
        return (1 << 15) | content | (1 << 23)

    def _member(self, user_id: int, *, with_user: bool = False) -> _Json:
        member: _Json = {
            "nick": None,
            "avatar": None,
            "banner": None,
            "roles": [str(r) for r in self._member_roles[user_id]],
            "joined_at": _CREATED_AT,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
            "unusual_dm_activity_until": None,
        }
        if with_user:
            member["user"] = self._users[user_id]
        return member

    def _permissions(self, user_id: int) -> int:
        if user_id == ALICE_ID:  # the owner has every permission
            return _PERMS_ALL
        permissions = int(self._roles[GUILD_ID]["permissions"])
        for role_id in self._member_roles[user_id]:
            permissions |= int(self._roles[role_id]["permissions"])
        return permissions

    def _guild(self, session: _Session) -> _Json:
        # Without GUILD_PRESENCES Discord lists only the bot itself (and voice members).
        member_ids = (
            list(self._users) if session.intents & _INTENT_GUILD_PRESENCES else [BOT_USER_ID]
        )
        text = [c for c in self._channels.values() if c["type"] == _CHANNEL_GUILD_TEXT]
        threads = [c for c in self._channels.values() if c["type"] == _CHANNEL_PUBLIC_THREAD]
        return {
            "id": str(GUILD_ID),
            "name": "Concordia Test Guild",
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(ALICE_ID),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "widget_enabled": False,
            "verification_level": 1,
            "default_message_notifications": 1,
            "explicit_content_filter": 2,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "features": [],
            "application_id": None,
            "system_channel_id": str(OTHER_CHANNEL_ID),
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "max_members": 500_000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "incidents_data": None,
            "roles": list(self._roles.values()),
            "emojis": [],
            "stickers": [],
            "joined_at": _CREATED_AT,
            "large": False,
            "unavailable": False,
            "lazy": True,
            "member_count": len(self._users),
            "members": [self._member(uid, with_user=True) for uid in member_ids],
            "channels": text,
            "threads": threads,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
            "application_command_counts": {},
        }

    def _find_command(self, name: str) -> _Json:
        for scope in (GUILD_ID, None):
            for command in self._commands.get(scope, []):
                if command["name"] == name and command["type"] == 1:
                    return command
        raise ValueError(
            f"no slash command /{name} is registered with the fake; "
            "sync the command tree (tree.sync) before send_interaction"
        )


_REASONS = {404: "Not Found", 405: "Method Not Allowed"}


def _bucket_hash(route: _Route) -> str:
    return hashlib.sha256(route.key.encode()).hexdigest()[:32]


async def _read_body(request: web.Request) -> tuple[Any, tuple[tuple[str, bytes], ...]]:
    """The JSON body (or multipart ``payload_json``) and uploaded files; ValueError if bad."""
    if request.content_type.startswith("multipart/"):
        body: Any = None
        files: list[tuple[str, bytes]] = []
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: Discord does not use them
            if part.name == "payload_json":
                body = json.loads(await part.text())
            elif part.filename is not None:
                files.append((part.filename, bytes(await part.read())))
        return body, tuple(files)
    raw = await request.read()
    if not raw:
        return None, ()
    return json.loads(raw), ()


def _require_object(body: Any) -> _Json:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _ApiError.invalid_form((), "MODEL_TYPE_CONVERT", "Only dictionaries may be used.")
    return body


def _check_flags(flags: Any, allowed: int, where: tuple[str, ...]) -> None:
    if flags is None:
        return
    if not isinstance(flags, int) or flags & ~allowed:
        raise _ApiError.invalid_form(
            (*where, "flags"), "MESSAGE_FLAGS_INVALID", f"Only flags {allowed} may be set here."
        )


def _checked_components(components: Any, where: tuple[str, ...]) -> list[_Json]:
    """The message's ``components`` as Discord stores them: action rows of buttons, each
    component given a sequential ``id`` unless it brought one.

    Refused like Discord does (400 / 50035): more than 5 rows, a top-level component that is
    not an action row, a row of 0 or over 5, a button without a valid style, a custom_id
    missing (or given to a link button), over 100 characters or repeated in the message, a
    label over 80. Other component types are refused too: the fake serves buttons only.
    """
    if components is None:
        return []
    at = (*where, "components")
    if not isinstance(components, list):
        raise _ApiError.invalid_form(at, "BASE_TYPE_ARRAY", "Must be an array.")
    if len(components) > _MAX_ACTION_ROWS:
        raise _ApiError.invalid_form(
            at, "BASE_TYPE_MAX_LENGTH", f"Must be {_MAX_ACTION_ROWS} or fewer in length."
        )
    rows: list[_Json] = copy.deepcopy(components)
    custom_ids: set[str] = set()
    for r, row in enumerate(rows):
        row_at = (*at, str(r))
        if not isinstance(row, dict) or row.get("type") != _COMPONENT_ACTION_ROW:
            raise _ApiError.invalid_form(
                (*row_at, "type"),
                "BASE_TYPE_CHOICES",
                f"Value must be one of ({_COMPONENT_ACTION_ROW},): top-level components of a "
                "message without IS_COMPONENTS_V2 are action rows.",
            )
        children = row.get("components")
        if not isinstance(children, list) or not 1 <= len(children) <= _MAX_ROW_BUTTONS:
            raise _ApiError.invalid_form(
                (*row_at, "components"),
                "BASE_TYPE_BAD_LENGTH",
                f"Must be between 1 and {_MAX_ROW_BUTTONS} in length.",
            )
        for c, child in enumerate(children):
            _check_button(child, (*row_at, "components", str(c)), custom_ids)
    used = {int(c["id"]) for c in _walk_components(rows) if isinstance(c.get("id"), int)}
    fresh = (n for n in itertools.count(1) if n not in used)
    for component in _walk_components(rows):
        if not isinstance(component.get("id"), int):
            component["id"] = next(fresh)
    return rows


def _check_button(button: Any, at: tuple[str, ...], custom_ids: set[str]) -> None:
    if not isinstance(button, dict) or button.get("type") != _COMPONENT_BUTTON:
        raise _ApiError.invalid_form(
            (*at, "type"),
            "BASE_TYPE_CHOICES",
            f"Value must be one of ({_COMPONENT_BUTTON},): the fake serves buttons only.",
        )
    style = button.get("style")
    if not isinstance(style, int) or not 1 <= style <= _BUTTON_STYLE_PREMIUM:
        raise _ApiError.invalid_form(
            (*at, "style"), "BASE_TYPE_CHOICES", "Value must be one of (1, 2, 3, 4, 5, 6)."
        )
    custom_id = button.get("custom_id")
    if style in (_BUTTON_STYLE_LINK, _BUTTON_STYLE_PREMIUM):
        if custom_id is not None:
            raise _ApiError.invalid_form(
                (*at, "custom_id"),
                "BUTTON_COMPONENT_CUSTOM_ID_NOT_ALLOWED",
                "A link or premium button cannot have a custom id.",
            )
    elif not isinstance(custom_id, str) or not custom_id:
        raise _ApiError.invalid_form(
            (*at, "custom_id"), "BASE_TYPE_REQUIRED", "This field is required"
        )
    elif len(custom_id) > _MAX_CUSTOM_ID_CHARS:
        raise _ApiError.invalid_form(
            (*at, "custom_id"),
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {_MAX_CUSTOM_ID_CHARS} or fewer in length.",
        )
    elif custom_id in custom_ids:
        raise _ApiError.invalid_form(
            (*at, "custom_id"),
            "COMPONENT_CUSTOM_ID_DUPLICATED",
            "Component custom id cannot be duplicated",
        )
    else:
        custom_ids.add(custom_id)
    label = button.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > _MAX_BUTTON_LABEL_CHARS):
        raise _ApiError.invalid_form(
            (*at, "label"),
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {_MAX_BUTTON_LABEL_CHARS} or fewer in length.",
        )


def _walk_components(rows: list[_Json]) -> Iterator[_Json]:
    """Every component, depth first (a row, then its children), as Discord numbers them."""
    for row in rows:
        yield row
        yield from row.get("components", [])


def _check_content_and_embeds(body: _Json, where: tuple[str, ...]) -> None:
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        raise _ApiError.invalid_form((*where, "content"), "BASE_TYPE_STRING", "Must be a string.")
    if content is not None and len(content) > _MAX_CONTENT_CHARS:
        raise _ApiError.invalid_form(
            (*where, "content"),
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {_MAX_CONTENT_CHARS} or fewer in length.",
        )
    embeds = body.get("embeds")
    if embeds is None:
        return
    if not isinstance(embeds, list) or len(embeds) > _MAX_EMBEDS:
        raise _ApiError.invalid_form(
            (*where, "embeds"), "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."
        )
    for index, embed in enumerate(embeds):
        description = embed.get("description") if isinstance(embed, dict) else None
        if description is not None and len(str(description)) > _MAX_EMBED_DESCRIPTION_CHARS:
            raise _ApiError.invalid_form(
                (*where, "embeds", str(index), "description"),
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {_MAX_EMBED_DESCRIPTION_CHARS} or fewer in length.",
            )


def _parse_allowed_mentions(allowed: Any) -> tuple[frozenset[str], set[int], set[int], bool]:
    where = ("allowed_mentions",)
    if not isinstance(allowed, dict):
        raise _ApiError.invalid_form(where, "MODEL_TYPE_CONVERT", "Only dictionaries may be used.")
    parse = allowed.get("parse") or []
    if not isinstance(parse, list) or not set(parse) <= _MENTION_PARSE_KINDS:
        raise _ApiError.invalid_form(
            (*where, "parse"), "BASE_TYPE_CHOICES", "Value must be one of users, roles, everyone."
        )
    users = {int(u) for u in allowed.get("users") or []}
    roles = {int(r) for r in allowed.get("roles") or []}
    for kind, ids in (("users", users), ("roles", roles)):
        if kind in parse and ids:
            raise _ApiError.invalid_form(
                (*where, kind),
                "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                f'parse:["{kind}"] and {kind}: [ids] are mutually exclusive.',
            )
    return frozenset(parse), users, roles, bool(allowed.get("replied_user", False))


def _validate_command(index: str, given: Any) -> tuple[int, str]:
    if not isinstance(given, dict):
        raise _ApiError.invalid_form((index,), "MODEL_TYPE_CONVERT", "Only dictionaries.")
    command_type = int(given.get("type", 1))
    name = given.get("name")
    if not isinstance(name, str) or not _COMMAND_NAME.match(name):
        raise _ApiError.invalid_form(
            (index, "name"), "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
        )
    if command_type == 1:
        if name != name.lower():
            raise _ApiError.invalid_form(
                (index, "name"), "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
            )
        description = given.get("description")
        if not isinstance(description, str) or not (
            1 <= len(description) <= _MAX_COMMAND_DESCRIPTION_CHARS
        ):
            raise _ApiError.invalid_form(
                (index, "description"),
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
    return command_type, name


def _leaf_options(
    where: str, option_defs: list[_Json], given: Mapping[str, str | int | float | bool]
) -> list[_Json]:
    """The ``options`` Discord sends for ``given``, typed by the registered ``option_defs``.

    ValueError for an option the command lacks, a required one missing, or a value of the
    wrong Python type (str for STRING, int for INTEGER, int or float for NUMBER, bool for
    BOOLEAN), because Discord never sends those.
    """
    known = {o["name"]: o for o in option_defs if o.get("type") != _SUBCOMMAND}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"{where} has no option(s) {unknown}; it has {sorted(known)}")
    missing = sorted(n for n, o in known.items() if o.get("required") and n not in given)
    if missing:
        raise ValueError(f"{where} needs option(s) {missing}")
    leaf: list[_Json] = []
    for name, value in given.items():
        option_type = known[name].get("type")
        python_types = _OPTION_PYTHON_TYPES.get(option_type)
        is_bool = isinstance(value, bool)
        if (
            python_types is None
            or not isinstance(value, python_types)
            or (is_bool != (option_type == _OPTION_BOOLEAN))
        ):
            raise ValueError(
                f"{where} option {name!r} has Discord type {option_type}; {value!r} does not fit"
            )
        leaf.append({"type": option_type, "name": name, "value": value})
    return leaf
