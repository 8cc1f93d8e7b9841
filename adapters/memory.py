"""An in-process chat platform for the core's tests (after errbot's test backend).

`MemoryPlatform` is a `MessageSink` that keeps every message in memory, declares
limits like a real platform, and fails on request (a 429 with ``retry_after``).
`MemoryAdapter` is the `bot.ports.ChatAdapter` over it: the composition root puts a relay
between the party and the platform, as for Discord and Slack, and tests push prompts in
with `push_prompt` and take what was posted or edited with `pop_message`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass

from bot.model import Author, Command, CommandResult, Prompt, Submission
from bot.ports import AdapterError, ChatOutput, PartyPort
from bot.render import Markup

__all__ = ["MemoryAdapter", "MemoryPlatform", "PostedMessage"]

PLATFORM = "memory"


@dataclass(frozen=True, slots=True)
class PostedMessage:
    """One post or edit as the platform saw it."""

    ref: str
    thread: str
    text: str
    is_edit: bool


class MemoryPlatform:
    """A fake chat platform: messages by ref, a log of every call, failures on demand."""

    def __init__(self, *, max_message_chars: int = 2000, edit_interval_s: float = 0.01):
        self._max = max_message_chars
        self._interval = edit_interval_s
        self._refs = itertools.count(1)
        self.messages: dict[str, PostedMessage] = {}
        self.calls: asyncio.Queue[PostedMessage] = asyncio.Queue()
        self.history: list[PostedMessage] = []
        self._failures: deque[float] = deque()

    @property
    def max_message_chars(self) -> int:
        return self._max

    @property
    def edit_interval_s(self) -> float:
        return self._interval

    def fail_next(self, count: int = 1, *, retry_after: float = 0.01) -> None:
        """The next ``count`` calls fail as a 429 asking to retry after ``retry_after`` s."""
        self._failures.extend([retry_after] * count)

    @property
    def failures_left(self) -> int:
        return len(self._failures)

    def _maybe_fail(self) -> None:
        if self._failures:
            raise AdapterError("429 Too Many Requests", retry_after=self._failures.popleft())

    async def post(self, thread: str, text: str) -> str:
        self._check(text)
        self._maybe_fail()
        message = PostedMessage(f"m{next(self._refs)}", thread, text, is_edit=False)
        self._record(message)
        return message.ref

    async def edit(self, ref: str, text: str) -> None:
        self._check(text)
        self._maybe_fail()
        old = self.messages.get(ref)
        if old is None:
            raise AdapterError(f"no message {ref}", retryable=False)
        self._record(PostedMessage(ref, old.thread, text, is_edit=True))

    def _check(self, text: str) -> None:
        if len(text) > self._max:
            raise AdapterError(f"message of {len(text)} chars is over the limit", retryable=False)

    def _record(self, message: PostedMessage) -> None:
        self.messages[message.ref] = message
        self.history.append(message)
        self.calls.put_nowait(message)

    def thread_text(self, thread: str) -> list[str]:
        """The current text of every message in ``thread``, in posting order."""
        return [m.text for m in self.messages.values() if m.thread == thread]


class MemoryAdapter:
    """A `MemoryPlatform` bound to one party: tests push prompts and commands in as its
    users, and read the platform. `run` has nothing to serve: it waits until `stop`."""

    name = PLATFORM

    def __init__(self, party: PartyPort, platform: MemoryPlatform | None = None):
        self._party = party
        self.platform = platform or MemoryPlatform()
        self._ids = itertools.count(1)
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        self._stopped.clear()

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()

    def outputs(self) -> list[ChatOutput]:
        return [ChatOutput(self._party.name, self.platform, PLATFORM, Markup.MARKDOWN)]

    @staticmethod
    def author(user: str) -> Author:
        return Author(PLATFORM, user, user)

    async def join(self, user: str, token: str) -> bool:
        return await self._party.join(token, self.author(user)) is not None

    async def push_prompt(
        self, user: str, text: str, *, thread: str = "t1", source_id: str | None = None
    ) -> Submission:
        source = source_id or f"{PLATFORM}:{next(self._ids)}"
        return await self._party.submit(Prompt(source, self.author(user), text, thread))

    async def command(self, user: str, name: str, args: str = "") -> CommandResult:
        return await self._party.command(Command(name, args, self.author(user)))

    async def pop_message(self, within_s: float = 10.0) -> PostedMessage:
        """The next post or edit, in order; TimeoutError if none comes in time."""
        return await asyncio.wait_for(self.platform.calls.get(), within_s)
