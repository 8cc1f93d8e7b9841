"""The seams the core owns: what an adapter may call on a party, and what it implements.

Invariant: adapters depend on the core through this module and `bot.model`, never the
reverse. Nothing in bot/ but the composition root imports adapters/ (tests/test_layering.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bot import ConcordiaError
from bot.model import (
    ApprovalRequested,
    ApprovalResolved,
    Author,
    Command,
    CommandResult,
    Decision,
    Listener,
    Prompt,
    QuestionAsked,
    QuestionClosed,
    Role,
    Submission,
)
from bot.render import Markup

__all__ = [
    "Adapter",
    "AdapterError",
    "ApprovalSink",
    "ChatAdapter",
    "ChatOutput",
    "ConnectedAdapter",
    "MessageSink",
    "Outbox",
    "OutboxEntry",
    "PartyPort",
    "QuestionSink",
]


class AdapterError(ConcordiaError):
    """A transport call failed.

    ``retry_after`` (seconds) is set when the platform said when to try again (a 429);
    ``retryable`` is False when retrying cannot help (a deleted thread, a bad token).
    """

    def __init__(self, message: str, *, retry_after: float | None = None, retryable: bool = True):
        super().__init__(message)
        self.retry_after = retry_after
        self.retryable = retryable


class PartyPort(Protocol):
    """What an adapter may ask of a party: membership, intake, commands, decisions, events.

    Adapters translate platform payloads into these calls and party events into platform
    calls; queueing, merging and the agent never enter them.
    """

    @property
    def name(self) -> str: ...

    @property
    def max_prompt_chars(self) -> int: ...

    def role_of(self, author: Author) -> Role | None: ...

    async def join(self, token: str, author: Author) -> Role | None: ...

    async def admit(self, token: str, author: Author) -> CommandResult: ...

    async def submit(self, prompt: Prompt) -> Submission: ...

    async def command(self, command: Command) -> CommandResult: ...

    async def decide(
        self, approval_id: int, author: Author, decision: Decision
    ) -> CommandResult: ...

    def waiting_approvals(self) -> list[ApprovalRequested]: ...

    async def answer(self, question_id: int, author: Author, text: str) -> CommandResult: ...

    def waiting_questions(self) -> list[QuestionAsked]: ...

    @property
    def max_image_bytes(self) -> int: ...

    def subscribe(self, listener: Listener) -> Callable[[], None]: ...

    def chat_safe(self, text: str) -> str: ...


class MessageSink(Protocol):
    """A platform where output lands as messages that can be posted and edited.

    ``max_message_chars`` is the platform's hard limit for one message and
    ``edit_interval_s`` the least time between two edits of one message that stays
    inside its rate limits. Both calls raise `AdapterError` on failure.
    """

    @property
    def max_message_chars(self) -> int: ...

    @property
    def edit_interval_s(self) -> float: ...

    async def post(self, thread: str, text: str) -> str:
        """Post a new message in ``thread``; return its opaque message ref."""
        ...

    async def edit(self, ref: str, text: str) -> None:
        """Replace the text of the message ``ref``."""
        ...


@runtime_checkable
class ApprovalSink(Protocol):
    """A sink that shows a tool-use approval with its own controls (buttons).

    Sinks without it get the approval as a plain message naming the
    `/concordia approve <id> allow|always|deny` command. Both calls raise `AdapterError`.
    """

    async def post_approval(self, thread: str, approval: ApprovalRequested) -> str:
        """Post the request (mentioning its requesters once); return the message ref."""
        ...

    async def close_approval(
        self, ref: str, approval: ApprovalRequested, resolved: ApprovalResolved
    ) -> None:
        """Show how it ended and take its controls away."""
        ...


@runtime_checkable
class QuestionSink(Protocol):
    """A sink that shows Claude's question with its own controls (a button per option).

    Sinks without it get the question as a plain message naming
    `/concordia answer <id> <number or words>`. Both calls raise `AdapterError`.
    """

    async def post_question(self, thread: str, question: QuestionAsked) -> str:
        """Post the question (mentioning ``question.mention`` once); return the message ref."""
        ...

    async def close_question(
        self, ref: str, question: QuestionAsked, closed: QuestionClosed
    ) -> None:
        """Show who answered what and take its controls away."""
        ...


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One message as the outbox last recorded it; ``ref`` is None until it was first posted."""

    entry_id: int
    platform: str
    thread: str
    batch_id: int
    seq: int
    text: str
    ref: str | None


class Outbox(Protocol):
    """The durable record of what must appear on each platform (the SQLite store implements it).

    An entry is keyed by (platform, thread, batch_id, seq). It is unsynced from the moment a
    text is written until the platform confirms that very text.
    """

    async def outbox_write(
        self, platform: str, thread: str, batch_id: int, seq: int, text: str
    ) -> int:
        """Upsert the entry's text and mark it unsynced; return its stable entry_id."""
        ...

    async def outbox_confirm(self, entry_id: int, ref: str, text: str) -> None:
        """Record that the platform shows ``text`` under ``ref``.

        The entry becomes synced iff ``text`` equals its latest written text.
        """
        ...

    async def outbox_unsynced(self, platform: str) -> list[OutboxEntry]:
        """What still has to be posted or edited on ``platform``, in (batch_id, seq) order."""
        ...


class Adapter(Protocol):
    """A transport bound to parties: `start` returns once it is serving, `run` serves until
    cancelled and raises `AdapterError` when it cannot go on (a refused token)."""

    name: str

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None:
        """Stop serving; idempotent."""
        ...


@runtime_checkable
class ConnectedAdapter(Protocol):
    """A transport that keeps a connection to a platform (a gateway, a socket) open; readiness
    asks it. Transports without one are ready while they serve."""

    async def is_connected(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ChatOutput:
    """Where a chat transport shows one party's events: its sink, and the thread that takes
    what has no thread of its own there (batches from another transport, early notices)."""

    party: str
    sink: MessageSink
    platform: str
    markup: Markup
    home_thread: str = ""


@runtime_checkable
class ChatAdapter(Adapter, Protocol):
    """A transport whose output is chat messages. The composition root puts a relay between
    each party and its sink (`bot.relay.ThreadRelay`), so the adapter only translates."""

    def outputs(self) -> list[ChatOutput]:
        """Where each served party's events go; valid once `start` has returned."""
        ...
