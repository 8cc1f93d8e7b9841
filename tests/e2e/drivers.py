"""Transport drivers: `concordia run` behind one transport, driven by the same calls.

A story told once (`test_scenarios.py`) runs over each driver: `WebSocketDriver` speaks
protocol v1 as terminals do, `DiscordDriver` drives the real discord.py through
`FakeDiscord`, `SlackDriver` the real slack-bolt through `FakeSlack`. The real `claude` CLI
answers from `FakeAnthropic`, whose default reply echoes the prompt (`echo`).

A driver acts as a person would (``alice``, ``bob``), reads back what the transport showed,
and knows the platform's rules, so `Driver.rule_problems` can check everything posted on it.
Every wait re-checks its condition when something happened (a request at a fake, a frame, a
log line, a turn), never on a timer: the driver owns the fakes' queues and turns each item
into a wake-up for `tests.waits.until`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import html
import itertools
import json
import re
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from websockets.exceptions import ConnectionClosed

from bot.config import Settings, load_settings
from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes import discord_api, slack_api
from tests.fakes.anthropic_api import FakeAnthropic, RecordedRequest
from tests.waits import until

__all__ = [
    "CHATS",
    "DISCORD_PARTY",
    "FENCE_LINE",
    "SLACK_PARTY",
    "TRANSPORTS",
    "DiscordDriver",
    "Driver",
    "File",
    "Hint",
    "Limit",
    "Request",
    "Sent",
    "SlackDriver",
    "WebSocketDriver",
    "assert_each_answered_once",
    "discord_config",
    "echo",
    "every_turn_answered",
    "fences_balanced",
    "interaction_reply",
    "open_driver",
    "party_tokens",
    "slack_config",
    "squash",
]

T = TypeVar("T")

TRANSPORTS = ("websocket", "discord", "slack")
CHATS = ("discord", "slack")
DISCORD_PARTY = f"discord-{discord_api.CHANNEL_ID}"
SLACK_PARTY = f"slack-{slack_api.CHANNEL_ID}"
WAIT_S = 60.0
# A fence line: its first non-blank characters are ``` (CommonMark, as split_message reads it).
FENCE_LINE = re.compile(r"^[ \t]*```[^\n]*$", re.MULTILINE)
_JOIN_LINE = re.compile(r"/concordia join (\S+)\s+\(host: (\S+?)\)")
_ECHO_CHARS = 200  # the fake API echoes this much of the prompt
_NON_MEMBER_LOG = "ignored a mention from a non-member: "
_DISCORD_LOADING = 1 << 7
_DISCORD_SUPPRESS_EMBEDS = 1 << 2
_DISCORD_DM = 1
_DISCORD_THREAD = 11
_DISCORD_POST = "POST /channels/{channel_id}/messages"
_DISCORD_PATCH = "PATCH /channels/{channel_id}/messages/{message_id}"
_DISCORD_REACTION = "PUT /channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me"
_DISCORD_LINK = re.compile(rf"/channels/{discord_api.GUILD_ID}/(\d+)")
_SLACK_SPECIAL = re.compile(r"<[!@#][^>]*>?")
_SLACK_METHODS = {"create": "chat.postMessage", "edit": "chat.update"}
# Escaping & < > may make a Slack text this much longer than max_message_chars.
_SLACK_ESCAPING_CHARS = 200


def echo(user_text: str) -> str:
    """The fake API's reply to a prompt without a trigger (and a SLOW reply's first delta)."""
    return "ECHO: " + user_text[:_ECHO_CHARS]


def squash(text: str) -> str:
    """``text`` without fence lines and whitespace: what a split must keep, in order."""
    return "".join(FENCE_LINE.sub("", text).split())


def fences_balanced(text: str) -> bool:
    return len(FENCE_LINE.findall(text)) % 2 == 0


@dataclass(frozen=True, slots=True)
class File:
    """A file sent with a prompt; ``is_snippet`` makes it a Slack snippet (elsewhere a file)."""

    name: str
    content: bytes
    is_snippet: bool = False


@dataclass(frozen=True, slots=True)
class Sent:
    """A prompt as sent. ``key`` names it on the transport (a client id, a Discord message id,
    a Slack ts), ``source_id`` in the prompts table. ``accepted`` is None until the bot has
    answered it: True once queued, False once refused, with ``reason`` when it gave one (a
    non-member's mention is refused with one hint per person, ever)."""

    user: str
    text: str
    key: str
    source_id: str
    accepted: bool | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Hint:
    """What the bot told ``user`` about a mention it did not queue; ``is_private`` when only
    they can see it."""

    user: str
    text: str
    is_private: bool


@dataclass(frozen=True, slots=True)
class Limit:
    """A rate limit served on the next ``kind`` ("create" or "edit") of a message. ``how``:
    "429", "global" (Discord's global 429) or "in_body" (Slack's ``ratelimited`` inside an
    HTTP 200, which tells no retry_after)."""

    kind: str
    retry_after_s: float
    how: str = "429"


@dataclass(frozen=True, slots=True)
class Request:
    """A create or edit of a message as the fake received it, and how it was answered."""

    arrived_at_s: float
    status: int
    is_limited: bool


# -- the chats' config and tokens, for drivers and platform tests alike --------------------


def discord_config(
    tmp_path: Path,
    api: FakeAnthropic,
    fake: discord_api.FakeDiscord,
    sections: dict[str, dict[str, object]] | None = None,
    **extra: Any,
) -> Path:
    """Write config.toml for the Discord bridge against ``fake``; ``extra`` goes in [discord]."""
    make_settings(
        tmp_path,
        api,
        discord={
            "channels": [str(discord_api.CHANNEL_ID)],
            "api_base": fake.api_base,
            "gateway_url": fake.gateway_url,
            "edit_interval_s": 0.05,
            **extra,
        },
        **(sections or {}),
    )
    return tmp_path / "config.toml"


def slack_config(
    tmp_path: Path,
    api: FakeAnthropic,
    fake: slack_api.FakeSlack,
    sections: dict[str, dict[str, object]] | None = None,
    **extra: Any,
) -> Path:
    """Write config.toml for the Slack bridge against ``fake``; ``extra`` goes in [slack]."""
    make_settings(
        tmp_path,
        api,
        slack={
            "channels": [slack_api.CHANNEL_ID],
            "api_url": fake.api_url,
            "edit_interval_s": 0.05,
            **extra,
        },
        **(sections or {}),
    )
    return tmp_path / "config.toml"


async def party_tokens(bot: BotProcess, party: str) -> tuple[str, str]:
    """The (prompter, host) tokens `concordia run` printed for a chat channel's party."""
    line = await bot.line_starting(f"party '{party}'")
    match = _JOIN_LINE.search(line)
    assert match, line
    return match.group(1), match.group(2)


async def interaction_reply(
    fake: discord_api.FakeDiscord,
    interaction: dict[str, Any],
    wake: asyncio.Queue[Any] | asyncio.Event | None = None,
    within_s: float = 10.0,
) -> dict[str, Any]:
    """The interaction's answer, once it has replaced the deferred "thinking" message.

    Wakes on ``fake.requests``, unless a driver that owns that queue passes its ``wake``."""

    def answered() -> dict[str, Any] | None:
        replies = fake.interaction_messages(int(interaction["id"]))
        done = [r for r in replies if r["content"] and not r["flags"] & _DISCORD_LOADING]
        return done[-1] if done else None

    reply = await until(
        answered,
        fake.requests if wake is None else wake,
        within_s=within_s,
        what=f"the answer to interaction {interaction['id']}",
    )
    assert reply is not None  # until returns only a truthy value
    return reply


class WakingBot(BotProcess):
    """`concordia run` whose every log line wakes the driver."""

    def __init__(self, config: Path, cwd: Path, env: dict[str, str], wake: asyncio.Event):
        super().__init__(config, cwd, env)
        self._wake = wake

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.log.append(line.decode(errors="replace"))
            self._wake.set()


# -- the drivers ----------------------------------------------------------------------------


class Driver(abc.ABC):
    """`concordia run` on one transport, with its fake far end; use as ``async with``.

    Subclasses implement the transport's side; reading the store is shared. Class facts a
    story may branch on: ``keeps_history`` is False where a reader who comes back sees
    nothing of what happened meanwhile (a terminal); ``links_merged`` where each merged
    prompt but the first is pointed at the thread its answer streams in (Discord);
    ``ways_to_drop`` lists how the connection can be lost, in the order a story drops it."""

    transport: ClassVar[str]
    keeps_history: ClassVar[bool] = True
    links_merged: ClassVar[bool] = False
    ways_to_drop: ClassVar[tuple[str, ...]] = ("reset",)
    mass_mentions: ClassVar[tuple[str, ...]] = ()  # as the platform writes them
    queued_mark: ClassVar[str] = ""

    def __init__(self, settings: Settings, api: FakeAnthropic, tmp_path: Path):
        self.settings = settings
        self.api = api
        self.tmp_path = tmp_path
        self.wake = asyncio.Event()
        self.invite = ""  # the prompter token
        self.members: set[str] = set()
        self.limits: list[Limit] = []  # the rate limits set so far
        self.max_message_chars = 0  # 0: output is not split
        self.stack = contextlib.AsyncExitStack()
        self._pumps: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        await self.stack.__aenter__()
        self.stack.push_async_callback(self._stop_pumps)
        self.pump(self.api.requests)
        try:
            await self.start()
        except BaseException:
            await self.stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stack.__aexit__(exc_type, exc, tb)

    def pump(self, queue: asyncio.Queue[Any], into: list[Any] | None = None) -> None:
        """Wake waiters on each item put on ``queue``, which the driver then owns: its items
        are appended to ``into``, or dropped (the fakes keep their own records)."""

        async def drain() -> None:
            while True:
                item = await queue.get()
                if into is not None:
                    into.append(item)
                self.wake.set()

        self._pumps.append(asyncio.create_task(drain()))

    async def _stop_pumps(self) -> None:
        for task in self._pumps:
            task.cancel()
        for task in self._pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def until(
        self, condition: Callable[[], T | None], what: str, within_s: float = WAIT_S
    ) -> T:
        """The first truthy value of ``condition()``; AssertionError naming ``what`` on timeout."""
        value = await until(condition, self.wake, within_s=within_s, what=what)
        assert value is not None  # until returns only a truthy value
        return value

    async def start(self) -> None:
        """Pump the fake's queues, then `boot`."""
        await self.boot()

    @abc.abstractmethod
    async def boot(self) -> None:
        """Start `concordia run` (again, after `kill`) and attach to it."""

    async def start_bot(self, env: dict[str, str]) -> None:
        config = self.tmp_path / "config.toml"
        self.bot = await self.stack.enter_async_context(
            WakingBot(config, self.tmp_path, env, self.wake)
        )

    async def kill(self) -> None:
        """kill -9 `concordia run`, as a crash would; it must exit with a failure."""
        self.bot.kill()
        assert await asyncio.wait_for(self.bot.wait_exit(), 10) != 0
        await self.bot.stop()

    async def restart(self) -> None:
        """`concordia run` again on the same config and state, after `kill`."""
        await self.boot()

    # -- people ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def join(self, user: str, token: str | None = None) -> bool:
        """``user`` joins with ``token`` (the prompter invite by default); True if welcomed."""

    @abc.abstractmethod
    async def send(self, user: str, text: str, files: Sequence[File] = ()) -> Sent:
        """Send a prompt (in a chat, a mention) without waiting for the bot."""

    @abc.abstractmethod
    async def settled(self, sent: Sent) -> Sent:
        """``sent`` once the bot has queued or refused it."""

    async def prompt(self, user: str, text: str, files: Sequence[File] = ()) -> Sent:
        """Send a prompt and wait until the bot has queued or refused it."""
        return await self.settled(await self.send(user, text, files))

    @abc.abstractmethod
    async def redeliver(self, sent: Sent) -> None:
        """Deliver ``sent`` once more, as an at-least-once transport may."""

    @abc.abstractmethod
    async def answer_question(self, user: str, question_id: int, text: str) -> str:
        """Answer Claude's question with `/concordia answer`; the bot's reply to ``user``."""

    def open_questions(self) -> list[int]:
        """The ids of Claude's questions waiting for an answer, as the store has them."""
        return [int(i) for (i,) in self.rows("SELECT id FROM questions WHERE outcome IS NULL")]

    # -- what the transport showed --------------------------------------------------------

    @abc.abstractmethod
    def output_messages(self, sent: Sent) -> list[str]:
        """The text of each message of Claude's output for ``sent``'s batch, as shown."""

    def answer(self, sent: Sent) -> str:
        """Claude's output shown for ``sent``'s batch, headers left out."""
        return "".join(self.output_messages(sent))

    def answer_raw(self, sent: Sent) -> str:
        """`answer` as the platform received it (before a reader's unescaping)."""
        return self.answer(sent)

    @abc.abstractmethod
    def versions(self, sent: Sent) -> list[str]:
        """Every text each message shown for ``sent``'s batch has had, header included."""

    @abc.abstractmethod
    def headers(self, sent: Sent) -> list[str]:
        """The headers shown for ``sent``'s batch, one per run of it."""

    @abc.abstractmethod
    def authors(self, sent: Sent) -> set[str]:
        """The people the header of ``sent``'s batch names."""

    @abc.abstractmethod
    def texts(self) -> list[str]:
        """Every text the bot has shown: one per message, or per batch on a terminal."""

    def notices(self) -> list[str]:
        """What the bot told everyone outside a batch's answer (a hold, a restart)."""
        return self.texts()

    def marks(self, sent: Sent) -> list[str]:
        """Every mark the bot put on ``sent``, in order (a chat's reactions)."""
        return []

    def marked(self) -> set[str]:
        """The keys of every message the bot has marked."""
        return set()

    def queued_marks(self, sent: Sent) -> int:
        """How many times ``sent`` was marked as queued."""
        return self.marks(sent).count(self.queued_mark)

    def hints(self) -> list[Hint]:
        """What the bot told people whose mentions it did not queue."""
        return []

    def linked_thread(self, sent: Sent) -> str | None:
        """The thread a merged prompt was pointed at, where ``links_merged``."""
        return None

    def finished(self, sent: Sent) -> bool:
        """Whether the end of ``sent``'s batch has been shown."""
        return self.state_of(sent) == "done"

    def downloads(self) -> list[int] | None:
        """The status of each file download the bot made; None where the fake does not see
        them (Discord's CDN)."""
        return None

    def inert(self, mass_mention: str) -> str:
        """How one of ``mass_mentions`` must be shown so that it pings nobody."""
        return mass_mention

    # -- faults and rules ------------------------------------------------------------------

    @abc.abstractmethod
    async def drop(self, way: str) -> None:
        """Lose the transport's connection in ``way`` (one of ``ways_to_drop``)."""

    @abc.abstractmethod
    async def reconnected(self) -> None:
        """Wait until the connection is back, with what was sent meanwhile."""

    def rate_limit(self, limit: Limit) -> None:
        raise NotImplementedError(f"{self.transport} serves no rate limits")

    def requests_of(self, kind: str) -> list[Request]:
        """Every create or edit (``kind``) of a message the fake received, in order."""
        raise NotImplementedError(f"{self.transport} has no messages to create")

    def rate_limited_count(self) -> int:
        """How many rate-limited answers the fake has served."""
        raise NotImplementedError(f"{self.transport} serves no rate limits")

    @abc.abstractmethod
    def rule_problems(self) -> list[str]:
        """What broke the platform's rules, over everything posted so far."""

    # -- the store, read with a connection of our own ------------------------------------

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.settings.store_path)) as db:
            return list(db.execute(sql, params))

    def stored_prompts(self) -> list[str]:
        """The source_id of every stored prompt, in order."""
        return [str(s) for (s,) in self.rows("SELECT source_id FROM prompts ORDER BY id")]

    def prompt_states(self) -> list[str]:
        return [str(s) for (s,) in self.rows("SELECT state FROM prompts ORDER BY id")]

    def state_of(self, sent: Sent) -> str | None:
        found = self.rows("SELECT state FROM prompts WHERE source_id = ?", (sent.source_id,))
        return str(found[0][0]) if found else None

    def batch_of(self, sent: Sent) -> int | None:
        found = self.rows("SELECT batch_id FROM prompts WHERE source_id = ?", (sent.source_id,))
        return found[0][0] if found else None

    def sources_in(self, batch_id: int | None) -> list[str]:
        """The source_id of each prompt in batch ``batch_id``, in order."""
        query = "SELECT source_id FROM prompts WHERE batch_id = ? ORDER BY id"
        return [str(s) for (s,) in self.rows(query, (batch_id,))]

    async def turn(self, index: int) -> RecordedRequest:
        """The ``index``-th request Claude sent to the API, once it has arrived."""
        await self.until(lambda: len(self.api.turns) > index, f"Claude's turn {index + 1}")
        return self.api.turns[index]


def every_turn_answered(d: Driver, words: Iterable[str]) -> bool:
    """Each word reached Claude, and each turn's echo is shown."""
    turns = [t.user_text for t in d.api.turns]
    texts = d.texts()
    return all(any(w in t for t in turns) for w in words) and all(
        any(echo(t) in text for text in texts) for t in turns
    )


def assert_each_answered_once(d: Driver, sent: dict[str, Sent]) -> None:
    """Each prompt (by its unique word) was queued once, sent to Claude once and stored once,
    and each turn's echo is shown once."""
    turns = [t.user_text for t in d.api.turns]
    for word, one in sent.items():
        assert sum(t.count(word) for t in turns) == 1, f"{word} reached Claude once"
        assert d.queued_marks(one) == 1, f"{word} queued once"
    texts = d.texts()
    for turn in turns:
        assert sum(echo(turn) in text for text in texts) == 1, f"one answer to {turn!r}"
    # The batch's end is stored just after its last text is shown, so its state is not read.
    assert sorted(d.stored_prompts()) == sorted(s.source_id for s in sent.values())


# -- WebSocket ------------------------------------------------------------------------------


class _Terminal(Client):
    """A protocol-v1 client whose every frame, and its close, wakes the driver."""

    def __init__(self, port: int, token: str, name: str, wake: asyncio.Event):
        super().__init__(port, token, name)
        self._wake = wake

    async def _read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                self.all.append(json.loads(raw))
                self._wake.set()
        self.closed.set()
        self._wake.set()

    def abort(self) -> None:
        """Reset the TCP connection, with no close frame, as a network failure would."""
        assert self.ws is not None
        self.ws.transport.abort()


class WebSocketDriver(Driver):
    """Terminals on protocol v1. A watcher, joined first, reads what everyone is shown (as a
    chat channel would), so that a person's connection can drop without losing the view."""

    transport = "websocket"
    keeps_history = False

    def __init__(self, settings: Settings, api: FakeAnthropic, tmp_path: Path):
        super().__init__(settings, api, tmp_path)
        self.clients: dict[str, list[_Terminal]] = {}  # each person's connections, in order
        self.watchers: list[_Terminal] = []  # one per run of the bot
        self._tokens: dict[str, str] = {}
        self._sent: dict[str, list[Sent]] = {}
        self._away: set[str] = set()
        self._ids = itertools.count(1)

    async def boot(self) -> None:
        await self.start_bot({})
        self.invite = self.bot.invite
        self.clients, self._away = {}, set()  # a restart ends every connection
        watcher = await self._connect("watcher", self.invite)
        assert watcher is not None, "the watcher joined"
        self.watchers.append(watcher)

    @property
    def watcher(self) -> _Terminal:
        return self.watchers[-1]

    async def _connect(self, name: str, token: str) -> _Terminal | None:
        client = _Terminal(self.bot.port, token, name, self.wake)
        await client.__aenter__()
        self.stack.push_async_callback(client.__aexit__, None, None, None)

        def answered() -> str | None:
            first = next((f for f in client.all if f["type"] in ("welcome", "error")), None)
            if first is None:
                return "closed" if client.closed.is_set() else None
            return str(first["type"])

        return client if await self.until(answered, f"{name}'s join") == "welcome" else None

    async def join(self, user: str, token: str | None = None) -> bool:
        token = token or self.invite
        client = await self._connect(user, token)
        if client is None:
            return False
        self.clients.setdefault(user, []).append(client)
        self._tokens[user] = token
        self.members.add(user)
        return True

    def _answers(self, sent: Sent) -> list[dict[str, Any]]:
        """The queued or rejected frames answering ``sent``, on any of its sender's
        connections."""
        return [
            f
            for client in self.clients.get(sent.user, [])
            for f in client.all
            if f["type"] in ("queued", "rejected") and f.get("id") == sent.key
        ]

    async def _transmit(self, sent: Sent) -> None:
        frame = {"type": "prompt", "id": sent.key, "text": sent.text}
        await self.clients[sent.user][-1].send(frame)

    async def send(self, user: str, text: str, files: Sequence[File] = ()) -> Sent:
        assert not files, "protocol v1 carries no files"
        key = f"p{next(self._ids)}"
        sent = Sent(user, text, key, f"websocket:{user}:{key}")
        self._sent.setdefault(user, []).append(sent)
        if user not in self._away:  # else once the terminal is back (`reconnected`)
            await self._transmit(sent)
        return sent

    async def settled(self, sent: Sent) -> Sent:
        answers = await self.until(lambda: self._answers(sent), f"an answer to {sent.key}")
        if answers[0]["type"] == "rejected":
            return dataclasses.replace(sent, accepted=False, reason=answers[0].get("reason"))
        assert self.state_of(sent), f"{sent.key} was answered queued before it was stored"
        return dataclasses.replace(sent, accepted=True)

    async def answer_question(self, user: str, question_id: int, text: str) -> str:
        if user not in self.clients:  # the bot restarted: the terminal connects again
            assert await self.join(user, self._tokens.get(user))
        client = self.clients[user][-1]
        before = len(client.all)
        args = f"{question_id} {text}"
        await client.send({"type": "command", "name": "answer", "args": args})
        reply = await self.until(
            lambda: next((f for f in client.all[before:] if f["type"] == "command_result"), None),
            f"the answer to {user}'s answer",
        )
        return str(reply["text"])

    async def redeliver(self, sent: Sent) -> None:
        # Sent again on the same connection: stored concurrently, either answer may come first.
        await self._transmit(sent)
        answers = await self.until(
            lambda: a if len(a := self._answers(sent)) >= 2 else None, f"2 answers to {sent.key}"
        )
        duplicates = sorted(bool(a.get("duplicate")) for a in answers)
        assert duplicates == [False, True], f"{sent.key} sent again is a duplicate: {answers}"

    def _batches(self, sent: Sent) -> list[dict[str, Any]]:
        """The batch frames the watcher saw that hold ``sent``."""
        ids = {a["prompt_id"] for a in self._answers(sent) if a["type"] == "queued"}
        return [
            f
            for f in self.watcher.all
            if f["type"] == "batch" and ids & {s["prompt_id"] for s in f["sources"]}
        ]

    def output_messages(self, sent: Sent) -> list[str]:
        batch_ids = {b["batch_id"] for b in self._batches(sent)}
        parts = [
            f["text"]
            for f in self.watcher.all
            if f["type"] == "output" and f["batch_id"] in batch_ids
        ]
        return ["".join(parts)] if parts else []

    def versions(self, sent: Sent) -> list[str]:
        return self.output_messages(sent)

    def headers(self, sent: Sent) -> list[str]:
        return [json.dumps(b) for b in self._batches(sent)]

    def authors(self, sent: Sent) -> set[str]:
        return {s["author"] for b in self._batches(sent)[:1] for s in b["sources"]}

    def texts(self) -> list[str]:
        batches: dict[int, list[str]] = {}
        for frame in self.watcher.all:
            if frame["type"] == "output":
                batches.setdefault(frame["batch_id"], []).append(frame["text"])
        return ["".join(parts) for parts in batches.values()]

    def notices(self) -> list[str]:
        return [str(f["message"]) for f in self.watcher.all if f["type"] == "system"]

    def queued_marks(self, sent: Sent) -> int:
        # Queued again, a prompt is answered with its first prompt id (and duplicate: true).
        return len({a["prompt_id"] for a in self._answers(sent) if a["type"] == "queued"})

    def finished(self, sent: Sent) -> bool:
        batch_ids = {b["batch_id"] for b in self._batches(sent)}
        return any(f["type"] == "done" and f["batch_id"] in batch_ids for f in self.watcher.all)

    async def drop(self, way: str) -> None:
        assert way == "reset", way
        dropped = [connections[-1] for connections in self.clients.values()]
        for client in dropped:
            client.abort()
        self._away |= set(self.clients)
        await self.until(lambda: all(c.closed.is_set() for c in dropped), "the connections lost")

    async def reconnected(self) -> None:
        """Each person's terminal joins again and sends each prompt that got no answer, with
        its id: one the bot already has must still be queued only once."""
        for user in sorted(self._away):
            assert await self.join(user, self._tokens[user]), f"{user} joined again"
            self._away.discard(user)
            for sent in self._sent[user]:
                if not self._answers(sent):
                    await self._transmit(sent)

    def rule_problems(self) -> list[str]:
        """Batches do not overlap as a terminal sees them, and each ends once. A batch that
        begins again while it runs is its re-run (after an outage or a dead agent)."""
        problems = []
        for watcher in self.watchers:
            running: int | None = None
            ended: Counter[int] = Counter()
            for frame in watcher.all:
                if frame["type"] == "batch":
                    if running is not None and running != frame["batch_id"]:
                        problems.append(f"batch {frame['batch_id']} began in batch {running}")
                    running = frame["batch_id"]
                elif frame["type"] == "done":
                    ended[frame["batch_id"]] += 1
                    running = None if running == frame["batch_id"] else running
            problems += [f"batch {b} ended {n} times" for b, n in ended.items() if n > 1]
        return problems


# -- Discord --------------------------------------------------------------------------------


class DiscordDriver(Driver):
    """Members mention the bot in the channel; each batch streams into a thread on its first
    mention. What the bot did is read from the fake's record of messages and calls."""

    transport = "discord"
    links_merged = True
    mass_mentions = ("@everyone", "@here")
    queued_mark = "⏳"
    users: ClassVar[dict[str, int]] = {"alice": discord_api.ALICE_ID, "bob": discord_api.BOB_ID}

    def __init__(
        self, settings: Settings, api: FakeAnthropic, tmp_path: Path, fake: discord_api.FakeDiscord
    ):
        super().__init__(settings, api, tmp_path)
        self.fake = fake
        self.max_message_chars = 2000
        self._away: list[str] | None = None  # ids sent while the gateway was down
        self._resumes = 0
        self._non_member_sends: dict[str, int] = {}  # id -> how many non-members' mentions

    async def start(self) -> None:
        self.pump(self.fake.requests)
        self.pump(self.fake.gateway_received)
        await self.boot()

    async def boot(self) -> None:
        await self.start_bot({"DISCORD_BOT_TOKEN": discord_api.TOKEN})
        self.invite, _ = await party_tokens(self.bot, DISCORD_PARTY)

    async def join(self, user: str, token: str | None = None) -> bool:
        interaction = await self.fake.send_interaction(
            self.users[user], subcommand="join", options={"token": token or self.invite}
        )
        reply = await interaction_reply(self.fake, interaction, self.wake, within_s=WAIT_S)
        if "Welcome" not in reply["content"]:
            return False
        self.members.add(user)
        return True

    async def send(self, user: str, text: str, files: Sequence[File] = ()) -> Sent:
        attachments = [(f.name, f.content) for f in files]
        message = await self.fake.send_message(self.users[user], text, attachments=attachments)
        key = str(message["id"])
        if self._away is not None:
            self._away.append(key)
        if user not in self.members:
            self._non_member_sends[key] = len(self._non_member_sends) + 1
        return Sent(user, text, key, f"discord:{key}")

    def _replies_to(self, key: str) -> list[str]:
        return [
            str(c.json.get("content"))
            for c in self.fake.calls
            if c.route == _DISCORD_POST
            and isinstance(c.json, dict)
            and str((c.json.get("message_reference") or {}).get("message_id")) == key
        ]

    async def settled(self, sent: Sent) -> Sent:
        def decided() -> Sent | None:
            if self.queued_mark in self.marks(sent):
                return dataclasses.replace(sent, accepted=True)
            replies = self._replies_to(sent.key)
            if replies:
                reason = replies[0].removeprefix("Not queued: ")
                return dataclasses.replace(sent, accepted=False, reason=reason)
            # A non-member's mention is only logged (and hinted about once, by DM).
            nth = self._non_member_sends.get(sent.key)
            logged = sum(_NON_MEMBER_LOG in line for line in self.bot.log)
            if nth is not None and logged >= nth:
                return dataclasses.replace(sent, accepted=False)
            return None

        decision = await self.until(decided, f"an answer to message {sent.key}")
        if decision.accepted:
            assert self.state_of(sent), f"{sent.key} was marked queued before it was stored"
        return decision

    async def answer_question(self, user: str, question_id: int, text: str) -> str:
        interaction = await self.fake.send_interaction(
            self.users[user],
            subcommand="answer",
            options={"question_id": question_id, "answer": text},
        )
        reply = await interaction_reply(self.fake, interaction, self.wake, within_s=WAIT_S)
        return str(reply["content"])

    async def redeliver(self, sent: Sent) -> None:
        # Discord is at-least-once: the same MESSAGE_CREATE (same seq) arrives twice.
        frame = await self.fake.redeliver_last_dispatch()
        assert (frame["t"], frame["d"]["id"]) == ("MESSAGE_CREATE", sent.key)

    # -- reading -------------------------------------------------------------------------

    def bot_messages(self, channel_id: int) -> list[dict[str, Any]]:
        """The bot's messages in a channel or thread, oldest first (none if it does not exist)."""
        bot_id = discord_api.BOT_USER_ID
        return [m for m in self.fake.messages(channel_id) if int(m["author"]["id"]) == bot_id]

    def content_calls(self) -> list[discord_api.RecordedCall]:
        """Every request that set a message's text: creates, edits, interaction answers."""
        return [
            c
            for c in self.fake.calls
            if c.method in ("POST", "PATCH") and isinstance(c.json, dict) and "content" in c.json
        ]

    def _channels(self) -> list[int]:
        """Every channel, thread or DM the bot posted in."""
        posts = (c for c in self.fake.calls if c.route == _DISCORD_POST)
        return list(dict.fromkeys(int(c.path.split("/")[2]) for c in posts))

    def _thread(self, sent: Sent) -> list[dict[str, Any]]:
        return self.bot_messages(int(sent.key))

    def output_messages(self, sent: Sent) -> list[str]:
        return [m["content"] for m in self._thread(sent) if not _is_discord_header(m["content"])]

    def versions(self, sent: Sent) -> list[str]:
        return [text for m in self._thread(sent) for text in m["content_history"]]

    def headers(self, sent: Sent) -> list[str]:
        return [m["content"] for m in self._thread(sent) if _is_discord_header(m["content"])]

    def authors(self, sent: Sent) -> set[str]:
        header = next(iter(self.headers(sent)), "")
        return {u for u, i in self.users.items() if u in header.lower() or str(i) in header}

    def texts(self) -> list[str]:
        return [m["content"] for channel in self._channels() for m in self.bot_messages(channel)]

    def _reactions(self) -> list[tuple[str, str]]:
        """(message id, emoji) of every reaction request the bot made."""
        paths = (c.path.split("/") for c in self.fake.calls if c.route == _DISCORD_REACTION)
        return [(parts[4], parts[-2]) for parts in paths]

    def marks(self, sent: Sent) -> list[str]:
        return [emoji for message_id, emoji in self._reactions() if message_id == sent.key]

    def marked(self) -> set[str]:
        return {message_id for message_id, _ in self._reactions()}

    def hints(self) -> list[Hint]:
        names = {str(i): user for user, i in self.users.items()}
        hints = []
        for call in self.content_calls():
            if "not joined" not in call.json["content"]:
                continue
            channel: dict[str, Any] = {}
            if call.path.startswith("/channels/"):
                channel = self.fake.channel(int(call.path.split("/")[2]))
            recipients = [str(r["id"]) for r in channel.get("recipients", [])]
            user = names.get(recipients[0], "?") if recipients else "?"
            hints.append(Hint(user, call.json["content"], channel.get("type") == _DISCORD_DM))
        return hints

    def linked_thread(self, sent: Sent) -> str | None:
        """The thread a 🔗-marked mention's reply links to, once both are there."""
        if "🔗" not in self.marks(sent):
            return None
        links = (_DISCORD_LINK.search(reply) for reply in self._replies_to(sent.key))
        return next((link.group(1) for link in links if link), None)

    def inert(self, mass_mention: str) -> str:
        return mass_mention.replace("@", "@\u200b", 1)

    # -- faults and rules ------------------------------------------------------------------

    def _resumed(self) -> int:
        return sum(f.op == discord_api.GatewayOp.RESUME for f in self.fake.gateway_frames)

    async def drop(self, way: str) -> None:
        assert way == "reset", way
        self._resumes, self._away = self._resumed(), []
        await self.fake.drop_gateway(code=None)  # a TCP reset: no close frame

    async def reconnected(self) -> None:
        """discord.py RESUMEs; the gateway replays what was sent meanwhile."""
        await self.until(lambda: self._resumed() > self._resumes, "a RESUME", within_s=30)
        replayed = {f["d"].get("id") for f in self.fake.replayed if f["t"] == "MESSAGE_CREATE"}
        assert set(self._away or ()) <= replayed, "the RESUME replayed the gap"
        self._away = None

    def rate_limit(self, limit: Limit) -> None:
        route = _DISCORD_POST if limit.kind == "create" else _DISCORD_PATCH
        self.fake.rate_limit(
            route, retry_after=limit.retry_after_s, is_global=limit.how == "global"
        )
        self.limits.append(limit)

    def requests_of(self, kind: str) -> list[Request]:
        route = _DISCORD_POST if kind == "create" else _DISCORD_PATCH
        return [
            Request(c.arrived_at_s, c.status, c.status == 429)
            for c in self.fake.calls
            if c.route == route
        ]

    def rate_limited_count(self) -> int:
        return self.fake.rate_limited_count

    def rule_problems(self) -> list[str]:
        """Nothing can ping, no link unfurls in a thread, nothing is over 2000 characters,
        and Discord refused nothing but the rate limits it was told to serve."""
        problems = []
        limited = 0
        for call in self.content_calls():
            where, content = f"{call.method} {call.path}", str(call.json["content"])
            if len(content) > self.max_message_chars:
                problems.append(f"{where}: {len(content)} characters")
            # The one ping allowed: a batch's authors, on Claude's request or question to them.
            mentions = dict(call.json.get("allowed_mentions") or {})
            pinged = {int(u) for u in mentions.pop("users", [])}
            if mentions.get("replied_user") is False:
                del mentions["replied_user"]
            if mentions != {"parse": []} or not pinged <= set(self.users.values()):
                problems.append(f"{where}: allowed_mentions {call.json.get('allowed_mentions')}")
            if re.search(r"@(everyone|here)", content):
                problems.append(f"{where}: a mass mention as is: {content[:120]!r}")
            if call.status >= 400 and call.status != 429:
                problems.append(f"{where}: refused with {call.status}")
            limited += call.status == 429
            in_thread = call.route == _DISCORD_POST and self._is_thread(call.path.split("/")[2])
            if in_thread and not int(call.json.get("flags") or 0) & _DISCORD_SUPPRESS_EMBEDS:
                problems.append(f"{where}: link previews not suppressed")
        if limited != len(self.limits):
            problems.append(f"{limited} 429s served for {len(self.limits)} rate limits set")
        for message in (m for channel in self._channels() for m in self.bot_messages(channel)):
            if message["mention_everyone"]:
                problems.append(f"message {message['id']} mentions everyone")
            longest = max(map(len, message["content_history"]), default=0)
            if longest > self.max_message_chars:
                problems.append(f"message {message['id']} once had {longest} characters")
        return problems

    def _is_thread(self, channel_id: str) -> bool:
        with contextlib.suppress(KeyError):
            return bool(self.fake.channel(int(channel_id))["type"] == _DISCORD_THREAD)
        return False


def _is_discord_header(text: str) -> bool:
    return text.startswith("**Batch ")


# -- Slack ----------------------------------------------------------------------------------


class SlackDriver(Driver):
    """Members mention the bot over Socket Mode; each batch streams into the thread of its
    first mention. Every envelope must be acked within Slack's 3 s, once it is stored."""

    transport = "slack"
    ways_to_drop = ("refresh", "reset")
    mass_mentions = ("<!channel>", "<!here>", f"<@{slack_api.BOB_ID}>")
    queued_mark = "hourglass_flowing_sand"
    users: ClassVar[dict[str, str]] = {"alice": slack_api.ALICE_ID, "bob": slack_api.BOB_ID}

    def __init__(
        self, settings: Settings, api: FakeAnthropic, tmp_path: Path, fake: slack_api.FakeSlack
    ):
        super().__init__(settings, api, tmp_path)
        self.fake = fake
        self.max_message_chars = settings.slack.max_message_chars
        self.envelopes: dict[str, dict[str, Any]] = {}  # every one sent, by envelope id
        self._sockets: list[int] = []  # every socket the fake greeted, in order
        self._gone = 0  # the socket last refreshed or dropped

    async def start(self) -> None:
        self.pump(self.fake.requests)
        self.pump(self.fake.acks)
        self.pump(self.fake.hellos, into=self._sockets)
        await self.boot()

    async def boot(self) -> None:
        await self.start_bot(
            {"SLACK_BOT_TOKEN": slack_api.BOT_TOKEN, "SLACK_APP_TOKEN": slack_api.APP_TOKEN}
        )
        self.invite, _ = await party_tokens(self.bot, SLACK_PARTY)

    async def join(self, user: str, token: str | None = None) -> bool:
        start = len(self.fake.calls)
        text = f"join {token or self.invite}"
        envelope = await self.fake.send_slash_command(self.users[user], text)
        self.envelopes[envelope["envelope_id"]] = envelope
        answer = await self.until(
            lambda: next(
                (c for c in self.fake.calls[start:] if c.method == slack_api.RESPONSE_URL), None
            ),
            f"the answer to {user}'s join",
        )
        if "Welcome" not in str(answer.params.get("text", "")):
            return False
        self.members.add(user)
        return True

    async def send(self, user: str, text: str, files: Sequence[File] = ()) -> Sent:
        shared = [slack_api.SharedFile(f.name, f.content, is_snippet=f.is_snippet) for f in files]
        envelope = await self.fake.send_mention(self.users[user], text, files=shared)
        self.envelopes[envelope["envelope_id"]] = envelope
        ts = str(envelope["payload"]["event"]["ts"])
        return Sent(user, text, ts, f"slack:{slack_api.CHANNEL_ID}:{ts}")

    def _envelope(self, sent: Sent) -> dict[str, Any]:
        mentions = (e for e in self.envelopes.values() if e["type"] == "events_api")
        return next(e for e in mentions if e["payload"]["event"]["ts"] == sent.key)

    async def settled(self, sent: Sent) -> Sent:
        # The ack follows the listener, which returns once the prompt is stored or refused.
        await self.fake.wait_ack(self._envelope(sent)["envelope_id"], WAIT_S)
        if self.state_of(sent):
            return dataclasses.replace(sent, accepted=True)
        if sent.user not in self.members:
            return dataclasses.replace(sent, accepted=False)  # one hint per person, ever

        def refusals() -> list[str]:
            to = self.users[sent.user]
            ephemerals = (e for e in self.fake.ephemerals if e["user"] == to)
            texts = (html.unescape(e["text"]) for e in ephemerals)
            return [t.removeprefix("Not queued: ") for t in texts if t.startswith("Not queued")]

        reasons = await self.until(refusals, f"{sent.user}'s mention stored by its ack")
        return dataclasses.replace(sent, accepted=False, reason=reasons[-1])

    async def answer_question(self, user: str, question_id: int, text: str) -> str:
        start = len(self.fake.calls)
        envelope = await self.fake.send_slash_command(
            self.users[user], f"answer {question_id} {text}"
        )
        self.envelopes[envelope["envelope_id"]] = envelope
        reply = await self.until(
            lambda: next(
                (c for c in self.fake.calls[start:] if c.method == slack_api.RESPONSE_URL), None
            ),
            f"the answer to {user}'s answer",
        )
        return html.unescape(str(reply.params.get("text", "")))

    async def redeliver(self, sent: Sent) -> None:
        again = await self.fake.redeliver(self._envelope(sent))
        ack = await self.fake.wait_ack(again["envelope_id"], 30.0)
        assert ack.delivery == 2, "the redelivery was acked"

    # -- reading -------------------------------------------------------------------------

    def _thread(self, sent: Sent) -> list[dict[str, Any]]:
        return self.fake.messages(slack_api.CHANNEL_ID, thread_ts=sent.key)[1:]

    def output_messages(self, sent: Sent) -> list[str]:
        texts = (html.unescape(m["text"]) for m in self._thread(sent))
        return [t for t in texts if not _is_slack_header(t)]

    def answer_raw(self, sent: Sent) -> str:
        return "".join(m["text"] for m in self._thread(sent) if not _is_slack_header(m["text"]))

    def versions(self, sent: Sent) -> list[str]:
        return [html.unescape(t) for m in self._thread(sent) for t in m["text_history"]]

    def headers(self, sent: Sent) -> list[str]:
        texts = (html.unescape(m["text"]) for m in self._thread(sent))
        return [t for t in texts if _is_slack_header(t)]

    def authors(self, sent: Sent) -> set[str]:
        header = next(iter(self.headers(sent)), "")
        return {user for user, user_id in self.users.items() if user_id in header}

    def texts(self) -> list[str]:
        """Every text the bot has shown in the channel and its threads, unescaped."""
        return [
            html.unescape(message["text"])
            for top in self.fake.messages(slack_api.CHANNEL_ID)
            for message in self.fake.messages(slack_api.CHANNEL_ID, thread_ts=top["ts"])
            if message["user"] == slack_api.BOT_USER_ID
        ]

    def _reactions(self) -> list[tuple[str, str]]:
        """(ts, name) of every reaction the bot added."""
        added = (c.params for c in self.fake.calls if c.method == "reactions.add")
        return [(str(p.get("timestamp")), str(p.get("name"))) for p in added]

    def marks(self, sent: Sent) -> list[str]:
        return [name for ts, name in self._reactions() if ts == sent.key]

    def marked(self) -> set[str]:
        return {ts for ts, _ in self._reactions()}

    def hints(self) -> list[Hint]:
        names = {user_id: user for user, user_id in self.users.items()}
        ephemerals = (c.params for c in self.fake.calls if c.method == "chat.postEphemeral")
        return [
            Hint(names.get(str(p.get("user")), "?"), str(p.get("text")), True) for p in ephemerals
        ]

    def downloads(self) -> list[int]:
        return [c.status for c in self.fake.calls if c.method == slack_api.FILE_DOWNLOAD]

    def inert(self, mass_mention: str) -> str:
        return html.escape(mass_mention, quote=False)

    # -- faults and rules ------------------------------------------------------------------

    async def drop(self, way: str) -> None:
        if way == "refresh":
            # The fake sends nothing more on that socket; envelopes wait for the next one.
            self._gone = await self.fake.request_refresh()
            return
        assert way == "reset", way
        # Slack resends what a dead socket swallowed only after a timeout (the fake, never):
        # the sockets' envelopes are acked first.
        for envelope_id in self.envelopes:
            await self.fake.wait_ack(envelope_id, slack_api.ACK_DEADLINE_S)
        self._gone = await self.fake.drop_socket()
        assert self._gone == self._sockets[-1], "the socket dropped is the newest one"

    async def reconnected(self) -> None:
        await self.until(
            lambda: self._sockets[-1] > self._gone,
            f"a socket after {self._gone}",
            within_s=60,  # a dropped socket is noticed at the next ping (10 s)
        )

    def rate_limit(self, limit: Limit) -> None:
        self.fake.rate_limit(
            _SLACK_METHODS[limit.kind],
            retry_after=int(limit.retry_after_s),
            in_body=limit.how == "in_body",
        )
        self.limits.append(limit)

    def requests_of(self, kind: str) -> list[Request]:
        return [
            Request(c.arrived_at_s, c.status, c.error == "ratelimited")
            for c in self.fake.calls
            if c.method == _SLACK_METHODS[kind]
        ]

    def rate_limited_count(self) -> int:
        return self.fake.rate_limited_count

    def rule_problems(self) -> list[str]:
        """Nothing can ping or unfurl, nothing is over max_message_chars, Slack refused
        nothing but the rate limits it was told to serve, and every envelope was acked
        within 3 s."""
        problems = []
        limited = 0
        for call in (c for c in self.fake.calls if c.method in _SLACK_METHODS.values()):
            raw = str(call.params.get("text", ""))
            shown = html.unescape(raw)
            if len(shown) > self.max_message_chars:
                problems.append(f"{call.method}: {len(shown)} characters")
            if len(raw) > self.max_message_chars + _SLACK_ESCAPING_CHARS:
                problems.append(f"{call.method}: {len(raw)} characters, escaped")
            # The one ping allowed: a batch's authors, on Claude's request or question to them.
            authors = {f"<@{user_id}>" for user_id in self.users.values()}
            if [m for m in _SLACK_SPECIAL.findall(raw) if m not in authors]:
                problems.append(f"{call.method}: posted unescaped: {raw[:120]!r}")
            unfurls = str(call.params.get("unfurl_links")).lower() != "false"
            if call.method == "chat.postMessage" and unfurls:
                problems.append(f"chat.postMessage may unfurl: {raw[:80]!r}")
            if call.error == "ratelimited":
                limited += 1
            elif call.error is not None:
                problems.append(f"{call.method} refused: {call.error}")
        if limited != len(self.limits):
            problems.append(f"{limited} rate limits served for {len(self.limits)} set")
        for envelope_id in self.envelopes:
            acks = [a for a in self.fake.ack_log if a.envelope_id == envelope_id]
            if not acks:
                problems.append(f"envelope {envelope_id} was never acked")
            elif acks[-1].elapsed_s >= slack_api.ACK_DEADLINE_S:
                problems.append(f"envelope {envelope_id} acked after {acks[-1].elapsed_s:.2f} s")
        return problems


def _is_slack_header(text: str) -> bool:
    return text.startswith("*Batch ")  # Slack bold: *Batch N*


# -- opening one ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_driver(
    transport: str,
    api: FakeAnthropic,
    tmp_path: Path,
    *,
    sections: dict[str, dict[str, object]] | None = None,
    **platform: Any,
) -> AsyncIterator[Driver]:
    """A started driver for ``transport`` (one of TRANSPORTS), its fake far end running;
    ``sections`` are settings by section ({"budget": {...}}), ``platform`` overrides settings
    of the chat's section ([discord] or [slack])."""
    if transport == "websocket":
        assert not platform, "protocol v1 has no platform settings"
        settings = make_settings(tmp_path, api, **(sections or {}))
        async with WebSocketDriver(settings, api, tmp_path) as ws:
            yield ws
    elif transport == "discord":
        async with discord_api.FakeDiscord() as discord_fake:
            settings = load_settings(
                discord_config(tmp_path, api, discord_fake, sections, **platform), environ={}
            )
            async with DiscordDriver(settings, api, tmp_path, discord_fake) as discord:
                yield discord
    elif transport == "slack":
        async with slack_api.FakeSlack() as slack_fake:
            settings = load_settings(
                slack_config(tmp_path, api, slack_fake, sections, **platform), environ={}
            )
            async with SlackDriver(settings, api, tmp_path, slack_fake) as slack:
                yield slack
    else:
        raise ValueError(f"no driver for {transport!r}; known: {TRANSPORTS}")
