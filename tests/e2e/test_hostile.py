"""Hostile input across every transport (issue #7): one corpus, one suite.

The corpus is `tests/data/hostile/*.jsonl` (see `tests/hostile_corpus.py`). Each test feeds
one category of it through one transport, all through the same checks:

- memory: the party in-process behind `adapters.memory` (the core's own path);
- websocket: `concordia run` as a subprocess, protocol-v1 clients on the wire;
- discord: `concordia run` with the real discord.py against `FakeDiscord`;
- slack: `concordia run` with the real slack-bolt over Socket Mode against `FakeSlack`.

The real `claude` CLI answers from `FakeAnthropic`, whose default reply echoes the prompt, so
what Claude received is in ``api.turns`` and what a prompt said comes back as Claude's output.

A test runs every case of its category against one bot and collects what went wrong, case by
case, so a failure lists every broken case at once. Each case checks its own outcome (refused
with its reason, or the exact clean text reaching Claude) and that nothing else happened: the
`prompts` and `shell_runs` tables hold only what was accepted, no marker file appeared, and
nothing the platform received can ping or shows a secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import itertools
import json
import logging
import os
import re
import sqlite3
import stat
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bot import app
from bot.config import Settings
from bot.confinement import sandbox_support
from bot.model import Accepted, Rejected
from bot.store import hash_token
from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes import discord_api, slack_api
from tests.fakes.anthropic_api import FakeAnthropic, RecordedRequest
from tests.hostile_corpus import CATEGORIES, CONTROL_CHARS, TRANSPORTS, Case, fill, load
from tests.rigs import open_rig

pytestmark = [pytest.mark.claude]

T = TypeVar("T")

ENV_SECRET_NAME = "DEPLOY_TOKEN"  # secret-looking: claude.env values under it are redacted
ENV_SECRET = "dpl_live_7f3a9c2e5b1d80464c1e"
SHELL_ALLOW = ["echo *", "ls", "ls *", "env", "./spawn_child.sh", "./print_10mb.sh"]
SHELL_TIMEOUT_S = 2.0
ZWSP = "\u200b"
MASS_MENTION = re.compile(r"@(everyone|here)", re.IGNORECASE)
SLACK_SPECIAL = re.compile(r"<[!@#]")
WAIT_S = 30.0
# The fake's ECHO reply repeats this much of the prompt; output cases stay below it.
ECHO_CHARS = 200
# discord.py / slack-bolt carry at most this much text in one message; more goes as a file.
DISCORD_MESSAGE_CHARS = 2000
SLACK_MESSAGE_CHARS = slack_api.MAX_TEXT_CHARS
# A shell summary line (bot.shell.ShellResult.summary) ends every shell answer.
SHELL_SUMMARY = re.compile(
    r"(^|\n)(exit -?\d+ in|killed |cancelled after|no exit status)[^\n]*$", re.MULTILINE
)
DISCORD_LOADING = 1 << 7
DISCORD_SUPPRESS_EMBEDS = 1 << 2
DISCORD_POST = "POST /channels/{channel_id}/messages"
DISCORD_REACTION = "PUT /channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me"
QUEUED = "⏳"
NON_MEMBER_LOG = "ignored a mention from a non-member: "
INVITE_ROTATED = re.compile(r"new invite token: (\S+)")
MB = 1 << 20


# -- waiting on what happened -------------------------------------------------------------------


class Wakeup:
    """Wakes waiters whenever anything happened: a request at a fake, a frame, a log line.

    `until` re-checks its predicate after each wake-up (never on a timer), so a wait costs
    nothing while nothing happens and fails with a message naming what did not happen.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def poke(self) -> None:
        self._event.set()

    def drain(self, queue: asyncio.Queue[Any]) -> None:
        """Wake on every item put on ``queue`` (which this then owns: the items are dropped)."""

        async def pump() -> None:
            while True:
                await queue.get()
                self._event.set()

        self._tasks.append(asyncio.create_task(pump()))

    async def until(
        self, predicate: Callable[[], T | None], what: str, within_s: float = WAIT_S
    ) -> T:
        """The first truthy value of ``predicate()``; AssertionError on timeout."""
        try:
            async with asyncio.timeout(within_s):
                while True:
                    self._event.clear()
                    value = predicate()
                    if value:
                        return value
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"{what} did not happen within {within_s:g} s") from None

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a prompt was answered. ``reason`` is None when the platform says nothing by design
    (a non-member's mention on Slack gets one hint, ever)."""

    accepted: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A command's answer; ``ok`` is None where the platform carries no such flag."""

    text: str
    ok: bool | None = None


class _Bot(BotProcess):
    """`concordia run` whose every log line wakes the suite."""

    def __init__(self, config: Path, cwd: Path, env: dict[str, str], wake: Wakeup):
        super().__init__(config, cwd, env)
        self._wake = wake

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.log.append(line.decode(errors="replace"))
            self._wake.poke()


def _peak_rss_mb(pid: int) -> float:
    """The process's high-water resident size (VmHWM), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, "no VmHWM in /proc/PID/status"
    return int(match.group(1)) / 1024


@dataclass
class MemoryGrowth:
    growth_mb: float = 0.0


def token_values(invite: str, host: str) -> dict[str, str]:
    """The tokens and the near misses built from them, for the corpus's placeholders."""
    upper = invite.upper() if invite.upper() != invite else invite.lower()
    flipped = invite[:-1] + ("A" if invite[-1] != "A" else "B")
    return {
        "invite": invite,
        "host_token": host,
        "invite_upper": upper,
        "invite_truncated": invite[:-1],
        "invite_flipped": flipped,
        "invite_sha256": hash_token(invite),
        # How a model asked to slip a token past the redactor might write it (#12).
        "host_token_reversed": host[::-1],
        "invite_spaced": " ".join(invite),
        "invite_base64": base64.b64encode(f"token={invite}\n".encode()).decode(),
    }


STATIC_VALUES = {
    "env_secret": ENV_SECRET,
    "bob_slack": slack_api.BOB_ID,
    "channel_slack": slack_api.CHANNEL_ID,
    "bob_discord": str(discord_api.BOB_ID),
    "role_discord": str(discord_api.OPERATOR_ROLE_ID),
    "channel_discord": str(discord_api.CHANNEL_ID),
}


# -- the drivers: one per transport, the same calls ---------------------------------------------


class Driver:
    """One transport with a bot behind it. ``alice`` has joined with the host token; ``bob``
    joins when a category needs him. Subclasses implement the transport's side."""

    transport = ""

    def __init__(
        self,
        settings: Settings,
        api: FakeAnthropic,
        tmp_path: Path,
        bot_env: dict[str, str] | None = None,
    ):
        self.settings = settings
        self.api = api
        self.tmp_path = tmp_path
        self.wake = Wakeup()
        # The bot's own environment beyond what the transport needs (exfil: secrets to steal).
        self.bot_env = dict(bot_env or {})
        self.values: dict[str, str] = {
            **STATIC_VALUES,
            "api_key": settings.claude.env["ANTHROPIC_API_KEY"],
            "state_dir": str(settings.state_dir),
            "state_parent": str(settings.state_dir.parent),
            "config_file": str(tmp_path / "config.toml"),
            "credentials_file": str(settings.claude.credentials_file),
        }
        self.members: set[str] = set()
        self.invite_answers: list[str] = []  # the host's own `invite` answers show a token
        self.stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Driver:
        await self.stack.__aenter__()
        self.stack.push_async_callback(self.wake.aclose)
        self.wake.drain(self.api.requests)
        try:
            await self.start()
        except BaseException:
            await self.stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stack.__aexit__(*exc_info)

    @property
    def workdir(self) -> Path:
        return self.settings.claude.workdir

    @property
    def settings_file(self) -> Path:
        return self.tmp_path / "config.toml"

    @property
    def current_invite(self) -> str:
        """The prompter token that admits now: the rotated one once `invite rotate` ran."""
        return self.values.get("rotated_invite", self.values["invite"])

    async def start(self) -> None:
        raise NotImplementedError

    async def join(
        self, user: str, token: Any, *, name: str | None = None, source: str = ""
    ) -> bool:
        raise NotImplementedError

    async def prompt(self, user: str, text: str) -> Outcome:
        raise NotImplementedError

    async def command(self, user: str, name: str, args: str = "") -> Reply:
        raise NotImplementedError

    async def flood(self, user: str, texts: list[str]) -> list[Outcome]:
        return [await self.prompt(user, text) for text in texts]

    def delivered(self) -> list[str]:
        """Every text the bot sent to the platform or the clients (the host's own `invite`
        answers left out: showing the token to the host is what they are for)."""
        raise NotImplementedError

    def outputs(self) -> list[str]:
        """Claude's output as shown: one string per message or batch."""
        raise NotImplementedError

    def log_text(self) -> str:
        raise NotImplementedError

    def ping_problems(self) -> list[str]:
        """What the platform received that could ping anyone."""
        return [
            f"a mass mention was posted as is: {t[:120]!r}"
            for t in self.delivered()
            if MASS_MENTION.search(t)
        ]

    def leaks(self, secret: str) -> list[str]:
        """Where ``secret`` was shown, one line each."""
        return [_short(t) for t in self.delivered() if secret in t]

    def control_problems(self) -> list[str]:
        """Control characters the platform or a client received (terminals render them)."""
        return [
            f"posted with control characters: {t!r:.160}"
            for t in self._strings()
            if CONTROL_CHARS.search(t)
        ]

    def _strings(self) -> list[str]:
        return self.delivered()

    def unfurl_problems(self, needle: str) -> list[str]:
        return []

    def measure_memory(self) -> contextlib.AbstractAsyncContextManager[MemoryGrowth]:
        """How much the bot's peak memory grew while the block ran."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the bot's SQLite file with a connection of our own."""
        with contextlib.closing(sqlite3.connect(self.settings.store.path)) as db:
            return list(db.execute(sql, params))

    def stored_texts(self) -> list[str]:
        return [str(t) for (t,) in self.rows("SELECT text FROM prompts ORDER BY id")]

    def shell_runs(self) -> list[tuple[Any, ...]]:
        return self.rows("SELECT name, command, outcome FROM shell_runs ORDER BY id")

    async def turn(self, index: int) -> RecordedRequest:
        """The ``index``-th request Claude sent to the API, once it has arrived."""
        await self.wake.until(lambda: len(self.api.turns) > index, f"Claude's turn {index + 1}")
        return self.api.turns[index]

    async def shown(self, *parts: str, within_s: float = WAIT_S) -> str:
        """Wait until one output holds every part; return it."""
        return await self.wake.until(
            lambda: next((t for t in self.outputs() if all(p in t for p in parts)), None),
            f"output showing {parts!r}",
            within_s,
        )

    async def rotate(self) -> str:
        """The host rotates the prompter token; the new one becomes ``rotated_invite``."""
        reply = await self.command("alice", "invite", "rotate")
        match = INVITE_ROTATED.search(reply.text)
        assert match, f"invite rotate answered {reply.text!r}"
        self.values["old_invite"] = self.values["invite"]
        self.values["rotated_invite"] = match.group(1)
        return match.group(1)

    async def guess(self, attempts: int) -> list[float]:
        """Seconds each of ``attempts`` bad joins from one source took to be refused."""
        elapsed = []
        for n in range(attempts):
            started = time.monotonic()
            assert not await self.join("bob", f"guess-{n}-not-a-token", source="127.0.0.99")
            elapsed.append(time.monotonic() - started)
        return elapsed

    async def run_setup(self) -> list[str]:
        return ["`concordia setup` is driven through the websocket transport only"]

    async def raw_input(self, case: Case) -> list[str]:
        return [f"{case.id}: raw bytes cannot travel over {self.transport}"]

    async def oversized_frame(self, case: Case) -> list[str]:
        return [f"{case.id}: no frames on {self.transport}"]


# -- memory ---------------------------------------------------------------------------------------


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class MemoryDriver(Driver):
    transport = "memory"

    async def start(self) -> None:
        settings = self.settings
        if settings.log.level == "DEBUG":
            self._capture_logs()
        for variable, value in self.bot_env.items():
            self.stack.callback(_restore_env, variable, os.environ.get(variable))
            os.environ[variable] = value
        # The app `concordia run` builds, with what Claude may see and reach built by its code;
        # it redacts the secrets `concordia run` would.
        rig = await self.stack.enter_async_context(
            open_rig(
                settings,
                self.api,
                agent_env=app.agent_env(settings, os.environ),
                confinement=app.confinement_for(settings, self.settings_file, sandbox_support()),
            )
        )
        self.chat = rig.chat
        self.platform = rig.chat.platform
        self.wake.drain(self.platform.calls)
        self.values |= token_values(rig.invites.prompter, rig.invites.host)
        self.replies: list[str] = []
        self._threads = itertools.count(1)
        assert await self.join("alice", rig.invites.host)

    def _capture_logs(self) -> None:
        capture = _LogCapture()
        capture.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        level = root.level
        root.addHandler(capture)
        root.setLevel(logging.DEBUG)
        self._logs = capture

        def restore() -> None:
            root.removeHandler(capture)
            root.setLevel(level)

        self.stack.callback(restore)

    async def join(
        self, user: str, token: Any, *, name: str | None = None, source: str = ""
    ) -> bool:
        joined = await self.chat.join(user, token)
        if joined:
            self.members.add(user)
        return joined

    async def prompt(self, user: str, text: str) -> Outcome:
        submitted = await self.chat.push_prompt(user, text, thread=f"t{next(self._threads)}")
        match submitted:
            case Accepted():
                return Outcome(True)
            case Rejected(reason=reason):
                return Outcome(False, reason)
        raise AssertionError(f"unexpected submission {submitted!r}")

    async def command(self, user: str, name: str, args: str = "") -> Reply:
        result = await self.chat.command(user, name, args)
        (self.invite_answers if name == "invite" else self.replies).append(result.text)
        if name == "leave" and result.ok:
            self.members.discard(user)
        return Reply(result.text, result.ok)

    def delivered(self) -> list[str]:
        return [m.text for m in self.platform.history] + self.replies

    def outputs(self) -> list[str]:
        return [m.text for m in self.platform.messages.values()]

    def log_text(self) -> str:
        return "\n".join(self._logs.lines)

    async def raw_input(self, case: Case) -> list[str]:
        # A transport that decoded leniently would hand the core lone surrogates.
        text = case.data().decode("utf-8", "surrogateescape")
        return check_outcome(case, await self.prompt("alice", text))

    @contextlib.asynccontextmanager
    async def measure_memory(self) -> AsyncIterator[MemoryGrowth]:
        growth = MemoryGrowth()
        tracemalloc.start()
        try:
            baseline, _ = tracemalloc.get_traced_memory()
            yield growth
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        growth.growth_mb = (peak - baseline) / MB


# -- the bot process: websocket, discord, slack -------------------------------------------------


class BotDriver(Driver):
    bot: _Bot

    async def start_bot(self, env: dict[str, str]) -> None:
        bot = _Bot(self.settings_file, self.tmp_path, {**self.bot_env, **env}, self.wake)
        self.bot = await self.stack.enter_async_context(bot)
        self.values["default_invite"] = self.bot.invite

    def log_text(self) -> str:
        return "".join(self.bot.log)

    @contextlib.asynccontextmanager
    async def measure_memory(self) -> AsyncIterator[MemoryGrowth]:
        assert self.bot.proc is not None
        pid = self.bot.proc.pid
        growth = MemoryGrowth()
        before = _peak_rss_mb(pid)
        yield growth
        growth.growth_mb = _peak_rss_mb(pid) - before


class _WsClient(Client):
    """A protocol-v1 client from a chosen loopback address, waking the suite on each frame."""

    def __init__(self, port: int, token: Any, name: str, *, source: str, wake: Wakeup):
        super().__init__(port, token, name)
        self._source = source
        self._wake = wake

    async def __aenter__(self) -> _WsClient:
        # Loopback sources (127.0.0.x) stand for different addresses: bad tokens are slowed
        # per source, and one case's guesses must not slow the next case's joins.
        self.ws = await connect(self._url, max_size=None, local_addr=(self._source, 0))
        await self.send({"type": "join", "token": self._token, "name": self.name})
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                self.all.append(json.loads(raw))
                self._wake.poke()
        self.closed.set()
        self._wake.poke()

    async def send_json(self, frame: dict[str, Any]) -> None:
        """As one text frame; UTF-8 as is, or JSON escapes when it holds a lone surrogate."""
        assert self.ws is not None
        payload = json.dumps(frame, ensure_ascii=False)
        try:
            payload.encode()
        except UnicodeEncodeError:
            payload = json.dumps(frame)
        await self.ws.send(payload)


class WebSocketDriver(BotDriver):
    transport = "websocket"

    async def start(self) -> None:
        await self.start_bot({})
        self.clients: dict[str, _WsClient] = {}
        self.opened: list[_WsClient] = []
        self._ids = itertools.count(1)
        self.values |= token_values(self.bot.invite, self.bot.host_token)
        self.stack.push_async_callback(self._close_clients)
        assert await self.join("alice", self.bot.host_token)

    async def _close_clients(self) -> None:
        for client in self.opened:
            if client.ws is not None:
                await client.ws.close()
            if client._reader is not None:
                await client._reader

    async def connect(self, name: str, token: Any, source: str = "127.0.0.1") -> _WsClient:
        client = _WsClient(self.bot.port, token, name, source=source or "127.0.0.1", wake=self.wake)
        self.opened.append(client)
        await client.__aenter__()
        return client

    async def join(
        self, user: str, token: Any, *, name: str | None = None, source: str = ""
    ) -> bool:
        client = await self.connect(name or user, token, source)
        first = await self.frame(client, lambda f: f["type"] in ("welcome", "error"), 0, "join")
        if first["type"] == "welcome":
            self.clients[user] = client
            self.members.add(user)
            return True
        await self.wake.until(client.closed.is_set, "the refused connection to close")
        return False

    async def frame(
        self,
        client: _WsClient,
        predicate: Callable[[dict[str, Any]], bool],
        start: int,
        what: str,
        within_s: float = WAIT_S,
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            hit = next((f for f in client.all[start:] if predicate(f)), None)
            if hit is None and client.closed.is_set():
                raise AssertionError(f"{client.name}'s connection closed while waiting for {what}")
            return hit

        return await self.wake.until(found, f"{what} for {client.name}", within_s)

    async def prompt(self, user: str, text: str) -> Outcome:
        client = self.clients[user]
        client_id = f"p{next(self._ids)}"
        start = len(client.all)
        await client.send_json({"type": "prompt", "id": client_id, "text": text})
        answer = await self.frame(
            client,
            lambda f: f.get("id") == client_id and f["type"] in ("queued", "rejected"),
            start,
            f"an answer to prompt {client_id}",
        )
        return Outcome(answer["type"] == "queued", answer.get("reason"))

    async def command(self, user: str, name: str, args: str = "") -> Reply:
        client = self.clients[user]
        start = len(client.all)
        await client.send_json({"type": "command", "name": name, "args": args})
        result = await self.frame(
            client,
            lambda f: f["type"] == "command_result" and f["name"] == name,
            start,
            f"the answer to {name}",
            within_s=60,
        )
        if name == "invite":
            self.invite_answers.append(result["text"])
        if name == "leave" and result["ok"]:
            self.members.discard(user)
        return Reply(result["text"], result["ok"])

    async def flood(self, user: str, texts: list[str]) -> list[Outcome]:
        client = self.clients[user]
        start = len(client.all)
        ids = [f"flood-{n}" for n in range(len(texts))]
        for client_id, text in zip(ids, texts, strict=True):
            await client.send_json({"type": "prompt", "id": client_id, "text": text})
        answers: dict[str, list[dict[str, Any]]] = {}
        seen = start

        def all_answered() -> bool:
            nonlocal seen
            for frame in client.all[seen:]:
                if frame["type"] in ("queued", "rejected") and str(frame.get("id")).startswith(
                    "flood-"
                ):
                    answers.setdefault(frame["id"], []).append(frame)
            seen = len(client.all)
            return len(answers) == len(ids)

        await self.wake.until(all_answered, f"answers to {len(ids)} prompts", 120)
        twice = [i for i, frames in answers.items() if len(frames) != 1]
        assert not twice, f"prompts answered more than once: {twice[:5]}"
        return [
            Outcome(answers[i][0]["type"] == "queued", answers[i][0].get("reason")) for i in ids
        ]

    def _frames(self) -> Iterator[dict[str, Any]]:
        for client in self.opened:
            yield from client.all

    def _strings(self) -> list[str]:
        def walk(value: Any) -> Iterator[str]:
            if isinstance(value, str):
                yield value
            elif isinstance(value, dict):
                for item in value.values():
                    yield from walk(item)
            elif isinstance(value, list):
                for item in value:
                    yield from walk(item)

        return [s for frame in self._frames() for s in walk(frame)]

    def delivered(self) -> list[str]:
        return [
            json.dumps(f, ensure_ascii=False)
            for f in self._frames()
            if not (f["type"] == "command_result" and f.get("name") == "invite")
        ] + self.outputs()

    def outputs(self) -> list[str]:
        batches: dict[int, list[str]] = {}
        for frame in self.clients["alice"].all:
            if frame["type"] == "output":
                batches.setdefault(frame["batch_id"], []).append(frame["text"])
        return ["".join(parts) for parts in batches.values()]

    def ping_problems(self) -> list[str]:
        texts = [
            t
            for f in self._frames()
            for t in (f.get("text"), f.get("prompt"), f.get("message"), f.get("detail"))
            if isinstance(t, str)
        ] + self.outputs()
        return [
            f"a mass mention reached a client as is: {t[:120]!r}"
            for t in texts
            if MASS_MENTION.search(t)
        ]

    async def guess(self, attempts: int) -> list[float]:
        elapsed = await super().guess(attempts)
        # The slow-down is per source: from another address the right token gets in at once.
        started = time.monotonic()
        assert await self.join("carol", self.current_invite, source="127.0.0.1")
        if time.monotonic() - started > 1.0:
            raise AssertionError("a right token from another address was slowed down too")
        return elapsed

    async def raw_input(self, case: Case) -> list[str]:
        probe = f"probe-{case.id}"
        assert await self.join(probe, self.values["invite"], source="127.0.0.2")
        client = self.clients[probe]
        assert client.ws is not None
        start = len(client.all)
        if case.get("frame") in ("binary", "text"):
            # A binary frame of bytes, or a text frame whose JSON the parser cannot read.
            await client.ws.send(case.data() if case.get("frame") == "binary" else case.text())
            error = await self.frame(
                client, lambda f: f["type"] == "error", start, "an error frame"
            )
            if error.get("code") != "malformed":
                return [f"{case.id}: answered {error!r}, expected code malformed"]
            status = await self.command(probe, "status")
            return [] if status.ok else [f"{case.id}: the connection did not stay usable"]
        # A text frame whose payload is not UTF-8: a protocol error for websockets.
        with contextlib.suppress(ConnectionClosed):
            await client.ws.send(case.data(), text=True)
        await self.wake.until(client.closed.is_set, f"{case.id}: the connection to close")
        if client.ws.close_code != case["close_code"]:
            return [f"{case.id}: closed with {client.ws.close_code}, expected {case['close_code']}"]
        return []

    async def oversized_frame(self, case: Case) -> list[str]:
        probe = f"probe-{case.id}"
        assert await self.join(probe, self.values["invite"], source="127.0.0.3")
        client = self.clients[probe]
        assert client.ws is not None
        frame = {"type": "prompt", "id": "huge", "text": case.text()}
        with contextlib.suppress(ConnectionClosed):
            await client.send_json(frame)
        await self.wake.until(client.closed.is_set, f"{case.id}: the connection to close")
        problems = []
        if client.ws.close_code != case["close_code"]:
            problems.append(
                f"{case.id}: closed with {client.ws.close_code}, expected {case['close_code']}"
            )
        if any(f.get("id") == "huge" for f in client.all):
            problems.append(f"{case.id}: the oversized prompt was answered")
        return problems

    async def run_setup(self) -> list[str]:
        """`concordia setup` with no terminal: a key the API rejects, then a good one."""
        good, bad = "sk-ant-setup-good-key-0123456789", "sk-ant-bad-setup-key-0000"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "setup", "--config", str(self.settings_file),
            cwd=self.tmp_path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,  # no controlling tty
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(f"{bad}\n{good}\n".encode()), 60)
        problems = []
        if proc.returncode != 0:
            problems.append(f"concordia setup exited {proc.returncode}: {err.decode()[-500:]}")
        if "rejected" not in err.decode():
            problems.append("concordia setup did not say the first key was rejected")
        path = self.settings.claude.credentials_file
        stored = json.loads(path.read_text()) if path.exists() else {}
        if stored.get("anthropic_api_key") != good:
            problems.append(f"the credentials file holds {stored!r}")
        if good in out.decode() + err.decode():
            problems.append("concordia setup printed the key it stored")
        return problems


class DiscordDriver(BotDriver):
    transport = "discord"
    users: ClassVar[dict[str, int]] = {"alice": discord_api.ALICE_ID, "bob": discord_api.BOB_ID}

    def __init__(
        self,
        settings: Settings,
        api: FakeAnthropic,
        tmp_path: Path,
        fake: Any,
        bot_env: dict[str, str] | None = None,
    ):
        super().__init__(settings, api, tmp_path, bot_env)
        self.fake: discord_api.FakeDiscord = fake
        self.values["discord_token"] = discord_api.TOKEN

    async def start(self) -> None:
        self.wake.drain(self.fake.requests)
        await self.start_bot({"DISCORD_BOT_TOKEN": discord_api.TOKEN})
        line = await self.bot.line_starting(f"party 'discord-{discord_api.CHANNEL_ID}'")
        match = re.search(r"/concordia join (\S+)\s+\(host: (\S+?)\)", line)
        assert match, line
        self.values |= token_values(match.group(1), match.group(2))
        self.interactions: list[int] = []
        assert await self.join("alice", match.group(2))

    async def join(
        self, user: str, token: Any, *, name: str | None = None, source: str = ""
    ) -> bool:
        reply = await self.command(user, "join", token)
        if "Welcome" in reply.text:
            self.members.add(user)
            return True
        return False

    def _hints(self) -> list[str]:
        return [line for line in self.bot.log if NON_MEMBER_LOG in line]

    def _replies_to(self, message_id: str) -> list[str]:
        return [
            str(c.json.get("content"))
            for c in self.fake.calls
            if c.route == DISCORD_POST
            and isinstance(c.json, dict)
            and str((c.json.get("message_reference") or {}).get("message_id")) == message_id
        ]

    def _queued(self) -> set[str]:
        return {
            c.path.split("/")[4]
            for c in self.fake.calls
            if c.route == DISCORD_REACTION and f"/{QUEUED}/" in c.path
        }

    async def send(self, user: str, text: str) -> dict[str, Any]:
        attachments: list[tuple[str, bytes]] = []
        if len(text) > DISCORD_MESSAGE_CHARS:  # the client turns a long paste into a file
            text, attachments = "", [("message.txt", text.encode())]
        return await self.fake.send_message(self.users[user], text, attachments=attachments)

    async def prompt(self, user: str, text: str) -> Outcome:
        hints = len(self._hints())
        message_id = str((await self.send(user, text))["id"])

        def decided() -> Outcome | None:
            if message_id in self._queued():
                return Outcome(True)
            replies = self._replies_to(message_id)
            if replies:
                return Outcome(False, replies[0].removeprefix("Not queued: "))
            if len(self._hints()) > hints:
                return Outcome(False, self._hints()[-1].split(NON_MEMBER_LOG, 1)[1].strip())
            return None

        return await self.wake.until(decided, f"an answer to message {message_id}")

    async def flood(self, user: str, texts: list[str]) -> list[Outcome]:
        ids = [str((await self.send(user, text))["id"]) for text in texts]

        def all_decided() -> list[Outcome] | None:
            queued = self._queued()
            replies: dict[str, str] = {}
            for c in self.fake.calls:
                if c.route == DISCORD_POST and isinstance(c.json, dict):
                    ref = c.json.get("message_reference") or {}
                    replies.setdefault(str(ref.get("message_id")), str(c.json.get("content")))
            if not all(i in queued or i in replies for i in ids):
                return None
            return [
                Outcome(True)
                if i in queued
                else Outcome(False, replies[i].removeprefix("Not queued: "))
                for i in ids
            ]

        return await self.wake.until(all_decided, f"answers to {len(ids)} mentions", 150)

    async def command(self, user: str, name: str, args: str = "") -> Reply:
        options: dict[str, Any] = {}
        if name == "join":
            options = {"token": args}
        elif name == "shell":
            options = {"command": args}
        elif name == "invite" and args == "rotate":
            options = {"rotate": True}
        elif name == "cancel" and args == "mine":
            options = {"mine": True}
        interaction = await self.fake.send_interaction(
            self.users[user], subcommand=name, options=options or None
        )
        interaction_id = int(interaction["id"])
        self.interactions.append(interaction_id)

        def answered() -> str | None:
            parts = [
                m["content"]
                for m in self.fake.interaction_messages(interaction_id)
                if m["content"] and not m["flags"] & DISCORD_LOADING
            ]
            text = "".join(parts)
            if not parts or (
                name == "shell" and text.startswith("```") and not SHELL_SUMMARY.search(text)
            ):
                return None
            return text

        text = await self.wake.until(answered, f"the answer to /concordia {name}", 60)
        if name == "invite":
            self.invite_answers.extend(
                m["content"] for m in self.fake.interaction_messages(interaction_id)
            )
        if name == "leave" and "left" in text:
            self.members.discard(user)
        return Reply(text)

    def _content_calls(self) -> list[Any]:
        return [
            c
            for c in self.fake.calls
            if c.method in ("POST", "PATCH") and isinstance(c.json, dict) and "content" in c.json
        ]

    def delivered(self) -> list[str]:
        return [text for _, _, text in self._texts()]

    def outputs(self) -> list[str]:
        return [str(c.json["content"]) for c in self._content_calls()]

    def _bot_messages(self) -> list[dict[str, Any]]:
        channels = dict.fromkeys(
            int(c.path.split("/")[2]) for c in self.fake.calls if c.route == DISCORD_POST
        )
        messages = [
            m
            for channel in channels
            for m in self.fake.messages(channel)
            if int(m["author"]["id"]) == discord_api.BOT_USER_ID
        ]
        for interaction_id in self.interactions:
            messages += self.fake.interaction_messages(interaction_id)
        return messages

    def _texts(self) -> Iterator[tuple[Any, str, str]]:
        """(call, key, text) for every text the bot sent: contents, thread names, answers."""
        for call in self.fake.calls:
            if not isinstance(call.json, dict):
                continue
            data = call.json.get("data")
            if not isinstance(data, dict):
                data = {}
            for key, value in (
                ("content", call.json.get("content")),
                ("name", call.json.get("name")),
                ("data.content", data.get("content")),
            ):
                if isinstance(value, str) and value not in self.invite_answers:
                    yield call, key, value

    def _strings(self) -> list[str]:
        # A thread is named after the message that started it: the member's own text, shown
        # right above it by Discord, which renders no escape sequence in a name.
        return [text for _, key, text in self._texts() if key != "name"]

    def leaks(self, secret: str) -> list[str]:
        return [
            f"{call.route or call.method + ' ' + call.path} {key}={_short(text, 80)}"
            for call, key, text in self._texts()
            if secret in text
        ]

    def ping_problems(self) -> list[str]:
        # Thread names cannot ping; message contents are checked, and what Discord resolved.
        problems = [
            f"a mass mention was posted as is: {_short(t, 120)}"
            for call, key, t in self._texts()
            if key != "name" and MASS_MENTION.search(t)
        ]
        for call in self._content_calls():
            if call.json.get("allowed_mentions") != {"parse": []}:
                problems.append(
                    f"{call.method} {call.path} allowed {call.json.get('allowed_mentions')!r}"
                )
        for message in self._bot_messages():
            if message["mention_everyone"] or message["mentions"] or message["mention_roles"]:
                problems.append(f"message {message['id']} pinged: {message['content'][:120]!r}")
        return problems

    def unfurl_problems(self, needle: str) -> list[str]:
        shown = [m for m in self._bot_messages() if needle in m["content"]]
        if not shown:
            return [f"no message showed {needle!r}"]
        return [
            f"message {m['id']} may unfurl {needle!r} (flags {m['flags']})"
            for m in shown
            if not int(m.get("flags") or 0) & DISCORD_SUPPRESS_EMBEDS
        ]

    async def guess(self, attempts: int) -> list[float]:
        elapsed = []
        for n in range(attempts):
            started = time.monotonic()
            reply = await self.command("bob", "join", f"guess-{n}-not-a-token")
            assert "refused" in reply.text, reply.text
            elapsed.append(time.monotonic() - started)
        return elapsed


class SlackDriver(BotDriver):
    transport = "slack"
    users: ClassVar[dict[str, str]] = {"alice": slack_api.ALICE_ID, "bob": slack_api.BOB_ID}
    _posting = ("chat.postMessage", "chat.update", "chat.postEphemeral", slack_api.RESPONSE_URL)

    def __init__(
        self,
        settings: Settings,
        api: FakeAnthropic,
        tmp_path: Path,
        fake: Any,
        bot_env: dict[str, str] | None = None,
    ):
        super().__init__(settings, api, tmp_path, bot_env)
        self.fake: slack_api.FakeSlack = fake
        self.values["slack_bot_token"] = slack_api.BOT_TOKEN
        self.values["slack_app_token"] = slack_api.APP_TOKEN

    async def start(self) -> None:
        self.wake.drain(self.fake.requests)
        self.wake.drain(self.fake.acks)
        await self.start_bot(
            {"SLACK_BOT_TOKEN": slack_api.BOT_TOKEN, "SLACK_APP_TOKEN": slack_api.APP_TOKEN}
        )
        line = await self.bot.line_starting(f"party 'slack-{slack_api.CHANNEL_ID}'")
        match = re.search(r"/concordia join (\S+)\s+\(host: (\S+?)\)", line)
        assert match, line
        self.values |= token_values(match.group(1), match.group(2))
        assert await self.join("alice", match.group(2))

    async def join(
        self, user: str, token: Any, *, name: str | None = None, source: str = ""
    ) -> bool:
        reply = await self.command(user, "join", token)
        if "Welcome" in reply.text:
            self.members.add(user)
            return True
        return False

    async def send(self, user: str, text: str) -> dict[str, Any]:
        files: list[slack_api.SharedFile] = []
        if len(text) > SLACK_MESSAGE_CHARS:  # Slack turns a long paste into a text file
            text, files = "", [slack_api.SharedFile("paste.txt", text.encode())]
        return await self.fake.send_mention(self.users[user], text, files=files)

    def _stored(self, envelope: dict[str, Any]) -> bool:
        source_id = f"slack:{slack_api.CHANNEL_ID}:{envelope['payload']['event']['ts']}"
        return bool(self.rows("SELECT 1 FROM prompts WHERE source_id = ?", (source_id,)))

    def _refusals(self, user: str, start: int) -> list[str]:
        return [
            html.unescape(e["text"]).removeprefix("Not queued: ")
            for e in self.fake.ephemerals[start:]
            if e["user"] == self.users[user] and e["text"].startswith("Not queued")
        ]

    async def prompt(self, user: str, text: str) -> Outcome:
        start = len(self.fake.ephemerals)
        envelope = await self.send(user, text)
        # The ack follows the listener, which returns once the prompt is stored or refused.
        await self.fake.wait_ack(envelope["envelope_id"], WAIT_S)
        if self._stored(envelope):
            return Outcome(True)
        if user not in self.members:
            return Outcome(False)  # one hint per person, ever: nothing more to wait for
        reasons = await self.wake.until(
            lambda: self._refusals(user, start), f"a refusal for {user}'s mention"
        )
        return Outcome(False, reasons[0])

    async def flood(self, user: str, texts: list[str]) -> list[Outcome]:
        start = len(self.fake.ephemerals)
        envelopes = [await self.send(user, text) for text in texts]
        for envelope in envelopes:
            await self.fake.wait_ack(envelope["envelope_id"], WAIT_S)
        stored = [self._stored(e) for e in envelopes]
        refused = len(texts) - sum(stored)

        def all_refusals() -> list[str] | None:
            found = self._refusals(user, start)
            return found if len(found) >= refused else None

        reasons = iter(
            await self.wake.until(all_refusals, f"{refused} refusals", 120) if refused else []
        )
        return [Outcome(True) if s else Outcome(False, next(reasons)) for s in stored]

    async def command(self, user: str, name: str, args: str = "") -> Reply:
        start = len(self.fake.calls)
        await self.fake.send_slash_command(self.users[user], f"{name} {args}" if args else name)
        call = await self.wake.until(
            lambda: next(
                (c for c in self.fake.calls[start:] if c.method == slack_api.RESPONSE_URL), None
            ),
            f"the answer to /concordia {name}",
            60,
        )
        text = html.unescape(str(call.params.get("text", "")))
        if name == "invite":
            self.invite_answers.append(text)
        if name == "leave" and "left" in text:
            self.members.discard(user)
        return Reply(text)

    def raw_texts(self) -> list[str]:
        return [str(c.params.get("text", "")) for c in self.fake.calls if c.method in self._posting]

    def delivered(self) -> list[str]:
        texts = [html.unescape(t) for t in self.raw_texts()]
        return [t for t in texts if t not in self.invite_answers]

    def outputs(self) -> list[str]:
        return [
            html.unescape(str(c.params.get("text", "")))
            for c in self.fake.calls
            if c.method in ("chat.postMessage", "chat.update")
        ]

    def ping_problems(self) -> list[str]:
        problems = super().ping_problems()
        problems += [
            f"posted unescaped: {t[:120]!r}" for t in self.raw_texts() if SLACK_SPECIAL.search(t)
        ]
        return problems

    def unfurl_problems(self, needle: str) -> list[str]:
        posts = [
            c for c in self.fake.calls
            if c.method == "chat.postMessage" and needle in str(c.params.get("text", ""))
        ]  # fmt: skip
        if not posts:
            return [f"no message showed {needle!r}"]
        return [
            f"chat.postMessage may unfurl {needle!r}: unfurl_links={c.params.get('unfurl_links')!r}"
            for c in posts
            if str(c.params.get("unfurl_links")).lower() != "false"
            or str(c.params.get("unfurl_media")).lower() != "false"
        ]

    async def guess(self, attempts: int) -> list[float]:
        elapsed = []
        for n in range(attempts):
            started = time.monotonic()
            reply = await self.command("bob", "join", f"guess-{n}-not-a-token")
            assert "refused" in reply.text, reply.text
            elapsed.append(time.monotonic() - started)
        return elapsed


# -- the categories -------------------------------------------------------------------------------


def check_outcome(case: Case, outcome: Outcome) -> list[str]:
    if case.expect in ("sanitized", "verbatim"):
        return (
            []
            if outcome.accepted
            else [f"{case.id}: refused ({outcome.reason}), expected accepted"]
        )
    if outcome.accepted:
        return [f"{case.id}: accepted, expected refused ({case.get('reason_contains')})"]
    wanted = case.get("reason_contains")
    if wanted and outcome.reason is not None and wanted not in outcome.reason:
        return [f"{case.id}: refused with {outcome.reason!r}, expected it to say {wanted!r}"]
    return []


async def run_prompt_cases(d: Driver, cases: list[Case]) -> list[str]:
    """control and size: each prompt alone, so what Claude reads is that prompt's text."""
    problems: list[str] = []
    expected: list[str] = []  # the clean text of every accepted prompt, in order
    turns_taken = 0
    for case in cases:
        if case.get("author_name"):
            continue  # after the others: it needs a busy Claude and its own accounting
        raw = case.get("b64") is not None or case.get("frame") == "text"
        if case.expect in ("closed", "malformed") and not raw:
            problems += await d.oversized_frame(case)
            continue
        if raw:
            problems += await d.raw_input(case)
            continue
        text = case.text()
        clean = case["clean"] if case.expect == "sanitized" else text
        turns = len(d.api.turns)
        outcome = await d.prompt("alice", text)
        problems += check_outcome(case, outcome)
        if not outcome.accepted:
            continue
        # Also when it should have been refused: later cases must read their own turn.
        received = (await d.turn(turns)).user_text
        turns_taken += 1
        if case.expect not in ("sanitized", "verbatim"):
            continue
        expected.append(clean)
        if received != clean:
            problems.append(
                f"{case.id}: Claude received {_short(received)}, expected {_short(clean)}"
            )
        if CONTROL_CHARS.search(received):
            problems.append(f"{case.id}: a control character reached Claude")
    problems += _table_problems(d.stored_texts(), expected)
    if len(d.api.turns) != turns_taken:
        problems.append(f"Claude had {len(d.api.turns)} turns for {turns_taken} accepted prompts")
    for case in cases:
        if case.get("author_name"):
            problems += await named_author(d, case)
    problems += d.ping_problems() + d.control_problems()
    return problems


def _table_problems(stored: list[str], expected: list[str]) -> list[str]:
    """The prompts table must hold exactly the accepted prompts' clean texts, in order."""
    if stored == expected:
        return []
    extra = [_short(t) for t in stored if t not in expected]
    missing = [_short(t) for t in expected if t not in stored]
    return [
        f"the prompts table holds {len(stored)} rows for {len(expected)} accepted prompts; "
        f"unexpected {extra[:5]}, missing {missing[:5]}"
    ]


async def named_author(d: Driver, case: Case) -> list[str]:
    """A hostile name reaches Claude in a merged prompt's attribution: two members send the
    same prompt while Claude is busy, so they land in one batch as one group."""
    name = case["author_name"]
    user = name if d.transport == "memory" else "named"
    assert await d.join(user, d.current_invite, name=name, source="127.0.0.5")
    turns = len(d.api.turns)
    busy = f"SLOW keep Claude busy, marker {case.id}"
    assert (await d.prompt("alice", busy)).accepted
    await d.shown(f"ECHO: {busy}")
    text = case.text()
    for who in ("alice", user):
        outcome = await d.prompt(who, text)
        if not outcome.accepted:
            return [f"{case.id}: {who!r} was refused: {outcome.reason}"]
    await d.command("alice", "cancel")  # interrupts the busy turn; the next batch merges both
    received = (await d.turn(turns + 1)).user_text
    problems = []
    if case["clean"] not in received or case["clean_name"] not in received:
        problems.append(f"{case.id}: Claude received {_short(received)}")
    if CONTROL_CHARS.search(received):
        problems.append(f"{case.id}: the name's control characters reached Claude: {received!r}")
    return problems


async def run_flood(d: Driver, cases: list[Case]) -> list[str]:
    problems: list[str] = []
    burst = d.settings.party.member_burst
    assert await d.join("bob", d.values["invite"])
    for case in cases:
        texts = [fill(case["text"], {"n": f"{n:05d}"}) for n in range(case["count"])]
        outcomes = await d.flood("alice", texts)
        accepted = [t for t, o in zip(texts, outcomes, strict=True) if o.accepted]
        if len(accepted) != burst:
            problems.append(
                f"{case.id}: {len(accepted)} accepted, expected party.member_burst={burst}"
            )
        if d.transport in ("memory", "websocket") and accepted != texts[:burst]:
            problems.append(f"{case.id}: accepted {accepted[:3]}…, expected the first {burst}")
        bad = [
            o.reason for o in outcomes
            if not o.accepted and (o.reason is None or "faster than" not in o.reason
                                   or case["reason_contains"] not in o.reason)
        ]  # fmt: skip
        if bad:
            problems.append(f"{case.id}: {len(bad)} refusals without the pace message: {bad[:2]}")
        stored = [str(t) for (t,) in d.rows("SELECT text FROM prompts ORDER BY id")]
        if sorted(stored) != sorted(accepted):
            problems.append(
                f"{case.id}: {len(stored)} rows in the prompts table, {len(accepted)} accepted"
            )
        # Nothing lost, nothing twice: every accepted prompt reaches Claude exactly once.
        sent = accepted
        await d.wake.until(
            lambda: all(any(t in turn.user_text for turn in d.api.turns) for t in sent),  # noqa: B023
            f"{case.id}: the accepted prompts reaching Claude",
        )
        twice = [t for t in accepted if sum(t in turn.user_text for turn in d.api.turns) != 1]
        if twice:
            problems.append(f"{case.id}: sent to Claude more than once: {twice[:3]}")
        # Another member is not slowed down, and gets an answer.
        other = "bob is not slowed down by alice, marker flood-other"
        outcome = await d.prompt("bob", other)
        if not outcome.accepted:
            problems.append(f"{case.id}: bob's prompt was refused: {outcome.reason}")
        else:
            await d.shown(f"ECHO: {other}", within_s=60)
    problems += d.ping_problems() + d.control_problems()
    return problems


async def run_tokens(d: Driver, cases: list[Case]) -> list[str]:
    problems: list[str] = []
    sources = (f"127.0.0.{n}" for n in itertools.count(10))
    proof: list[str] = []  # the only prompts the table may hold: bob's, before he leaves

    async def refused_and_nothing_queued(
        case: Case, user: str, *, reason: str | None = "join"
    ) -> None:
        if isinstance(d, WebSocketDriver) and user not in d.clients:
            return  # a refused connection is closed: nothing can be sent on it
        outcome = await d.prompt(user, f"may I prompt? marker {case.id}")
        if outcome.accepted:
            problems.append(f"{case.id}: {user}'s prompt was accepted")
        elif reason and outcome.reason is not None and reason not in outcome.reason:
            problems.append(f"{case.id}: {user} was refused with {outcome.reason!r}")

    for case in cases:
        flow = case["flow"]
        if flow == "join":
            token = (
                case["token_json"] if "token_json" in case.fields else case.text(d.values, "token")
            )
            if await d.join("bob", token, source=next(sources)):
                problems.append(f"{case.id}: the token was accepted")
                await d.command("bob", "leave")
            await refused_and_nothing_queued(case, "bob")
        elif flow == "after_rotate":
            new = await d.rotate()
            if await d.join("bob", fill(case["token"], d.values), source=next(sources)):
                problems.append(f"{case.id}: the old token still admits")
            if not await d.join("bob", new, source=next(sources)):
                problems.append(f"{case.id}: the rotated token does not admit")
        elif flow == "after_leave":
            if "bob" not in d.members:
                assert await d.join("bob", d.current_invite)
            user = "bob"
            if d.transport == "websocket":
                # The same name on a second connection: leaving ends it for every connection.
                assert await d.join("bob#2", d.current_invite, name="bob")
                user = "bob#2"
            text = f"bob is in for now, marker {case.id}"
            if not (await d.prompt(user, text)).accepted:
                problems.append(f"{case.id}: a member's prompt was refused before leaving")
            proof.append(text)
            left = await d.command("bob", "leave")
            if "left" not in left.text:
                problems.append(f"{case.id}: leave answered {left.text!r}")
            await refused_and_nothing_queued(case, user, reason=case["reason_contains"])
        elif flow == "guess_burst":
            elapsed = await d.guess(case["attempts"])
            growing = all(b >= a - 0.05 for a, b in itertools.pairwise(elapsed))
            if not (growing and elapsed[-1] >= elapsed[0] + 1.0):
                problems.append(
                    f"{case.id}: refusals took {[round(e, 2) for e in elapsed]} s: not slowed down"
                )
    problems += _table_problems(d.stored_texts(), proof)
    problems += _secret_problems(d, ("invite", "host_token", "rotated_invite"))
    problems += d.ping_problems() + d.control_problems()
    return problems


async def run_shell(d: Driver, cases: list[Case]) -> list[str]:
    problems: list[str] = []
    for case in cases:
        for name, body in (case.get("files") or {}).items():
            path = d.workdir / name
            path.write_text(body)
            path.chmod(0o755)
    assert await d.join("bob", d.values["invite"])
    runs = 0
    for case in cases:
        before = d.shell_runs()
        if case.expect == "impostor_refused":
            problems += await impostor(d, case)
            runs += 1  # the host's own check command, which must run
            continue
        growth = MemoryGrowth()
        if case.expect == "capped":
            async with d.measure_memory() as growth:
                reply = await d.command(case["user"], "shell", case["command"])
        else:
            reply = await d.command(case["user"], "shell", case["command"])
        shown = f"{case.id}: answered {_short(reply.text)}"
        if case.expect == "refused":
            if reply.ok or case["reason_contains"] not in reply.text:
                problems.append(f"{shown}, expected a refusal saying {case['reason_contains']!r}")
            if d.shell_runs() != before:
                problems.append(f"{case.id}: a refused command was recorded as run")
            continue
        runs += 1
        if len(d.shell_runs()) != len(before) + 1:
            problems.append(f"{case.id}: not recorded in shell_runs")
        if case.expect == "ran" and (
            case["output_contains"] not in reply.text or reply.ok is False
        ):
            problems.append(f"{shown}, expected output with {case['output_contains']!r}")
        if case.expect == "timed_out":
            if case["reason_contains"] not in reply.text:
                problems.append(f"{shown}, expected it killed after the timeout")
            problems += _child_gone(case, d.workdir / case["pid_file"])
        if case.expect == "capped":
            if (
                case["reason_contains"] not in reply.text
                or len(reply.text) > case["max_posted_chars"]
            ):
                problems.append(
                    f"{case.id}: {len(reply.text):,} characters posted: {_short(reply.text)}"
                )
            if growth.growth_mb > case["max_memory_growth_mb"]:
                problems.append(f"{case.id}: the bot's memory grew by {growth.growth_mb:.1f} MiB")
    if (d.workdir / "pwned").exists():
        problems.append("a refused command ran: the marker file exists")
    recorded = d.shell_runs()
    if len(recorded) != runs:
        problems.append(f"shell_runs holds {len(recorded)} runs, expected {runs}: {recorded}")
    if any(name == "bob" for name, *_ in recorded):
        problems.append("bob, who is not allowed, has a run recorded")
    problems += _secret_problems(d, SECRET_NAMES)
    problems += d.ping_problems()
    return problems


SECRET_NAMES = (
    "api_key", "env_secret", "invite", "host_token", "rotated_invite",
    "discord_token", "slack_bot_token", "slack_app_token",
)  # fmt: skip


def _secret_problems(d: Driver, names: tuple[str, ...]) -> list[str]:
    """Each named secret this transport knows, wherever it was shown."""
    return [
        f"{name} was shown: {leaks}"
        for name in names
        if name in d.values and (leaks := d.leaks(d.values[name]))
    ]


def _child_gone(case: Case, pid_file: Path) -> list[str]:
    if not pid_file.exists():
        return [f"{case.id}: the command never started its child"]
    try:
        child = psutil.Process(int(pid_file.read_text()))
    except psutil.NoSuchProcess:
        return []
    psutil.wait_procs([child], timeout=10)
    with contextlib.suppress(psutil.NoSuchProcess):
        if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
            child.kill()
            return [f"{case.id}: the backgrounded child {child.pid} outlived the timeout"]
    return []


async def impostor(d: Driver, case: Case) -> list[str]:
    """A prompter who tries the host's (allowed) WebSocket name is refused the name
    (`name_taken`), or, where a transport admits it, gains nothing; the host keeps every
    right either way."""
    problems = []
    before = d.shell_runs()
    if not await d.join("impostor", d.values["invite"], name="alice", source="127.0.0.9"):
        host = await d.command("alice", "shell", "echo the host keeps the right")
        if not host.ok or "the host keeps the right" not in host.text:
            problems.append(f"{case.id}: the host lost the shell right: {_short(host.text)}")
        return problems
    tried = await d.command("impostor", "shell", case["command"])
    if tried.ok or "may not run shell commands" not in tried.text:
        problems.append(f"{case.id}: the impostor's shell command answered {_short(tried.text)}")
    host = await d.command("alice", "shell", "echo the host keeps the right")
    if not host.ok or "the host keeps the right" not in host.text:
        problems.append(
            f"{case.id}: the host (websocket:alice, host token) was refused after a prompter "
            f"joined as alice: {_short(host.text)}"
        )
    # The host comes back on a new connection under the same name, as `concordia join` would.
    assert await d.join("alice-again", d.values["host_token"], name="alice")
    invite = await d.command("impostor", "invite")
    if invite.ok or d.values["invite"] in invite.text:
        problems.append(
            f"{case.id}: after the host rejoined as alice, the impostor's connection ran the "
            f"host-only `invite`: {_short(invite.text)}"
        )
    again = await d.command("impostor", "shell", case["command"])
    if again.ok or "may not run shell commands" not in again.text:
        problems.append(
            f"{case.id}: the impostor's second shell command answered {_short(again.text)}"
        )
    impostor_runs = [r for r in d.shell_runs()[len(before) :] if case["command"] in r[1]]
    if impostor_runs:
        problems.append(f"{case.id}: the impostor's command ran: {impostor_runs}")
    return problems


async def run_output(d: Driver, cases: list[Case]) -> list[str]:
    problems: list[str] = []
    secrets: list[tuple[str, str]] = []
    for case in cases:
        if case.get("flow") == "after_rotate" and "rotated_invite" not in d.values:
            await d.rotate()
        text = case.text(d.values)
        assert len(text) < ECHO_CHARS, f"{case.id}: the echo would cut it"
        marker = text.rsplit("marker ", 1)[1]
        outcome = await d.prompt("alice", text)
        if not outcome.accepted:
            problems.append(f"{case.id}: refused: {outcome.reason}")
            continue
        await d.shown("ECHO:", marker)
        if case.get("secret"):
            secrets.append((case.id, fill(case["secret"], d.values)))
        if case.expect == "no_unfurl":
            problems += [f"{case.id}: {p}" for p in d.unfurl_problems("https://evil.example/phish")]
    delivered = d.delivered()
    by_secret: dict[str, list[str]] = {}
    for case_id, secret in secrets:
        by_secret.setdefault(secret, []).append(case_id)
    for secret, case_ids in by_secret.items():
        leaks = d.leaks(secret)
        if leaks:
            problems.append(
                f"{', '.join(case_ids)}: the secret was shown {len(leaks)} time(s): {leaks}"
            )
    if secrets and not any("[redacted]" in t for t in delivered):
        problems.append("nothing was shown as [redacted]")
    problems += d.ping_problems()
    if not any(f"@{ZWSP}everyone" in t for t in delivered):
        problems.append("no neutralised @everyone was shown: did the echo arrive?")
    if isinstance(d, SlackDriver) and not any("&lt;!channel&gt;" in t for t in d.raw_texts()):
        problems.append("no escaped <!channel> was posted: did the echo arrive?")
    return problems


async def run_files(d: Driver, cases: list[Case]) -> list[str]:
    problems: list[str] = []
    for case in cases:
        if case.expect == "mode":
            if case.get("flow") == "setup":
                problems += await d.run_setup()
            path = d.tmp_path / case["path"]
            if not path.exists():
                problems.append(f"{case.id}: {case['path']} does not exist")
                continue
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode != int(case["mode"], 8):
                problems.append(f"{case.id}: {case['path']} is {mode:04o}, expected {case['mode']}")
            continue
        # Joins with the right tokens, near misses and wrong ones, and a rotated token.
        sources = (f"127.0.0.{n}" for n in itertools.count(40))
        for near in ("invite_truncated", "invite_flipped", "invite_upper"):
            assert not await d.join("bob", d.values[near], source=next(sources))
        assert not await d.join("bob", "wrong-token", source=next(sources))
        assert await d.join("bob", d.values["invite"], source=next(sources))
        rotated = await d.rotate()
        assert await d.join("bob", rotated, name="bob", source=next(sources))
        log = d.log_text()
        assert "joined" in log, "the log was captured"
        width = case["window_chars"]
        for template in case["secrets"]:
            name = template.strip("{}")
            if name not in d.values:
                continue  # not a secret of this transport
            secret = d.values[name]
            if secret in log:
                problems.append(f"{case.id}: {name} is in the log in clear")
            elif any(secret[i : i + width] in log for i in range(len(secret) - width + 1)):
                problems.append(f"{case.id}: {width} characters in a row of {name} are in the log")
    return problems


# The bot's own secrets, in every transport's environment for the exfil category: none may
# reach Claude. GEMINI_API_KEY turns the Gemini merger on; a one-ask batch never calls it.
EXFIL_BOT_ENV = {
    "DISCORD_BOT_TOKEN": "exfil-discord-canary-5b0e4c7a9d31f2",
    "SLACK_BOT_TOKEN": "xoxb-exfil-slack-canary-8e2a61",
    "SLACK_APP_TOKEN": "xapp-exfil-slack-canary-3f9d07",
    "GEMINI_API_KEY": "exfil-gemini-canary-c41a7e9b2d",
    "CONCORDIA_GEMINI_MODEL": "gemini-exfil-canary-6d2f",
}


async def run_exfil(d: Driver, cases: list[Case]) -> list[str]:
    """Each attack as a prompt of alice's, with every tool call pre-approved (the worst case:
    an approver allows whatever is asked); then no secret of the bot may be in any request
    the API received, i.e. in the model's context, nor in anything posted."""
    tokens = ("invite", "host_token", "discord_token", "slack_bot_token", "slack_app_token")
    secrets = {n: d.values[n] for n in tokens if n in d.values} | d.bot_env
    problems: list[str] = []
    for case in cases:
        asked = len(d.api.turns)
        outcome = await d.prompt("alice", case.text(d.values))
        if not outcome.accepted:
            problems.append(f"{case.id}: refused: {outcome.reason}")
            continue
        # The tool call, then its result (or refusal) back to the model: two requests.
        await d.wake.until(lambda n=asked: len(d.api.turns) >= n + 2, f"{case.id}'s tool result")
    # The last attack's answer, shown: every batch has been posted by then.
    last = cases[-1].text(d.values).split()[-1]
    await d.shown("TOOL ", last[-24:])
    for number, turn in enumerate(d.api.turns):
        body = json.dumps(turn.body, ensure_ascii=False)
        problems += [
            f"request {number + 1}: {name} reached the model's context"
            for name, value in secrets.items()
            if value in body
        ]
    for name, value in secrets.items():
        problems += [f"{name} was shown: {leak}" for leak in d.leaks(value)]
    return problems


RUNNERS: dict[str, Callable[[Driver, list[Case]], Awaitable[list[str]]]] = {
    "control": run_prompt_cases,
    "size": run_prompt_cases,
    "flood": run_flood,
    "tokens": run_tokens,
    "shell": run_shell,
    "output": run_output,
    "files": run_files,
    "exfil": run_exfil,
}


def _short(text: str, limit: int = 100) -> str:
    shown = repr(text[:limit])
    return shown + (f"… ({len(text):,} chars)" if len(text) > limit else "")


# -- wiring ---------------------------------------------------------------------------------------


def configure(
    tmp_path: Path, api: FakeAnthropic, transport: str, category: str, **platform: Any
) -> Settings:
    """Write config.toml for this transport and category; return the settings it holds."""
    base = make_settings(tmp_path, api)
    sections: dict[str, dict[str, object]] = {
        "party": {"collect_window_s": 0.05, "member_burst": 1000},
        "claude": {
            "command": base.claude.command,
            "env": {**base.claude.env, ENV_SECRET_NAME: ENV_SECRET},
            "workdir": str(base.claude.workdir),
            "turn_timeout_s": 60.0,
            "restart_backoff_s": 0.2,
            "credentials_file": str(tmp_path / "creds" / "credentials.json"),
        },
        **platform,
    }
    if category == "flood":
        sections["party"] = {
            "collect_window_s": 0.05,
            "member_burst": 20,
            # One refill a minute: a slow run cannot earn alice a 21st prompt mid-burst.
            "member_prompts_per_minute": 1.0,
        }
    if category == "shell":
        alice = {
            "memory": "alice",
            "websocket": "alice",
            "discord": str(discord_api.ALICE_ID),
            "slack": slack_api.ALICE_ID,
        }[transport]
        sections["shell"] = {
            "enabled": True,
            "allowed_users": [f"{transport}:{alice}"],
            "allow": SHELL_ALLOW,
            "timeout_s": SHELL_TIMEOUT_S,
            "max_output_chars": 3000,
        }
    if category == "files":
        sections["log"] = {"level": "DEBUG"}
    if category == "exfil":
        sections["claude"] = {**sections["claude"], "allowed_tools": ["Bash", "Read"]}
    return make_settings(tmp_path, api, **sections)


@contextlib.asynccontextmanager
async def open_driver(
    transport: str, category: str, api: FakeAnthropic, tmp_path: Path
) -> AsyncIterator[Driver]:
    bot_env = EXFIL_BOT_ENV if category == "exfil" else None
    if transport == "memory":
        settings = configure(tmp_path, api, transport, category)
        async with MemoryDriver(settings, api, tmp_path, bot_env) as d:
            yield d
    elif transport == "websocket":
        settings = configure(tmp_path, api, transport, category)
        async with WebSocketDriver(settings, api, tmp_path, bot_env) as d:
            yield d
    elif transport == "discord":
        async with discord_api.FakeDiscord() as fake:
            discord = {
                "channels": [str(discord_api.CHANNEL_ID)],
                "api_base": fake.api_base,
                "gateway_url": fake.gateway_url,
                "edit_interval_s": 0.05,
            }
            settings = configure(tmp_path, api, transport, category, discord=discord)
            async with DiscordDriver(settings, api, tmp_path, fake, bot_env) as d:
                yield d
    else:
        async with slack_api.FakeSlack() as fake:
            slack = {
                "channels": [slack_api.CHANNEL_ID],
                "api_url": fake.api_url,
                "edit_interval_s": 0.05,
            }
            settings = configure(tmp_path, api, transport, category, slack=slack)
            async with SlackDriver(settings, api, tmp_path, fake, bot_env) as d:
                yield d


@pytest.mark.timeout(120)
@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_hostile_input_is_refused_or_made_safe(
    transport: str, category: str, fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    cases = [c.on(transport) for c in load(category) if transport in c.transports]
    assert cases, f"the corpus has no {category} case for {transport}"
    async with open_driver(transport, category, fake_api, tmp_path) as driver:
        problems = await RUNNERS[category](driver, cases)
    assert not problems, (
        f"{len(problems)} problem(s) with {len(cases)} {category} cases over {transport}:\n  "
        + "\n  ".join(problems)
    )
