"""The agent seam: what the runner, the approvals and the commands use of a coding agent.

Invariant: the core drives an agent only through `AgentSession` and reads its output only
as the closed union `AgentEvent`; what the agent is (the `claude -p` process of
`bot.session`, a fake in tests) is the composition root's choice.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self, TypeAlias

from bot import ConcordiaError
from bot.model import Image, QuestionOption, TurnStatus

__all__ = [
    "AgentEvent",
    "AgentSession",
    "AskedQuestion",
    "JsonValue",
    "Outage",
    "OutageKind",
    "PlanRequest",
    "QuestionRequest",
    "SessionDied",
    "SessionError",
    "TextDelta",
    "ToolRequest",
    "ToolUse",
    "TurnEnd",
    "Usage",
]

JsonValue: TypeAlias = "str | int | float | bool | list[JsonValue] | Mapping[str, JsonValue] | None"
"""A value as JSON carries it (a tool's input is a JSON object of these)."""


class SessionError(ConcordiaError):
    """The agent could not be started or driven."""


class SessionDied(SessionError):
    """The agent's process exited while a turn was running."""

    def __init__(self, message: str, *, exit_status: int | None):
        super().__init__(message)
        self.exit_status = exit_status


@dataclass(frozen=True, slots=True)
class TextDelta:
    """More of the answer's text, to append to what came before."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolUse:
    """The agent uses a tool; ``detail`` is a one-line summary of its input."""

    name: str
    detail: str


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """The agent asks whether it may use a tool: the turn goes on once
    `AgentSession.answer_tool` has answered it."""

    request_id: str
    tool: str
    input: Mapping[str, JsonValue]
    tool_use_id: str


@dataclass(frozen=True, slots=True)
class AskedQuestion:
    """One question the agent puts to its user, with the options it offers."""

    question: str
    header: str
    options: tuple[QuestionOption, ...]
    multi_select: bool = False


@dataclass(frozen=True, slots=True)
class QuestionRequest:
    """The agent asks its user questions: the turn goes on once
    `AgentSession.answer_questions` has answered them (or said nobody did)."""

    request_id: str
    questions: tuple[AskedQuestion, ...]
    input: Mapping[str, JsonValue]  # as asked: the agent's own answer shape is built on it


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """The agent, planning, asks to carry out ``plan`` (Markdown): the turn goes on once
    `AgentSession.answer_plan` has approved it or rejected it with feedback."""

    request_id: str
    plan: str
    input: Mapping[str, JsonValue]


@dataclass(frozen=True, slots=True)
class Usage:
    """What a turn used, as the agent reported it: tokens, and this turn's cost in US dollars
    (None when the agent did not say)."""

    input_tokens: int
    output_tokens: int
    cost_usd: float | None = None


class OutageKind(enum.StrEnum):
    """Why the model's API would not answer: the turn failed through no fault of its own."""

    USAGE_LIMIT = "usage_limit"  # the account's usage limit (a subscription's window)
    RATE_LIMITED = "rate_limited"  # HTTP 429
    OVERLOADED = "overloaded"  # HTTP 529 (or 503): the API is overloaded


@dataclass(frozen=True, slots=True)
class Outage:
    """The API refused the turn; ``resets_at`` is when it says it will take turns again."""

    kind: OutageKind
    resets_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TurnEnd:
    """The turn is over: how it ended, its final text, and why it failed (``error``);
    ``outage`` when it failed because the API would not answer (worth a later re-run)."""

    status: TurnStatus
    result: str
    error: str = ""
    usage: Usage | None = None  # None when the agent reported none
    outage: Outage | None = None


AgentEvent: TypeAlias = TextDelta | ToolUse | ToolRequest | QuestionRequest | PlanRequest | TurnEnd
"""What a turn yields; consume it with ``match`` and `typing.assert_never`."""


class AgentSession(Protocol):
    """One party's agent. The party's runner is the only caller of `run`, `interrupt`,
    `answer_tool` and `restart`; the composition root enters it (starting it, raising
    `SessionError` when it cannot start), awaits `serve` in its task group, and exits it
    (stopping it; idempotent).

    ``ready`` is set while the agent can take a turn; ``session_id`` names its conversation
    (None before the first turn of a fresh one); ``restarts`` counts unplanned restarts.
    """

    @property
    def ready(self) -> asyncio.Event: ...

    @property
    def session_id(self) -> str | None: ...

    @property
    def restarts(self) -> int: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def serve(self) -> None:
        """Wait while the agent keeps running; raise what ended it for good. Cancelling it
        leaves the agent running (exiting the context stops it)."""
        ...

    def run(
        self, prompt: str, *, images: Sequence[Image] = (), plan: bool = False
    ) -> AsyncIterator[AgentEvent]:
        """Send one turn and yield its events; the last one is always a `TurnEnd`.

        ``images`` go with the text; ``plan`` has the agent plan first and ask (a
        `PlanRequest`) before it acts. Raises `SessionDied` when the agent exits mid-turn
        (it is restarting), and `SessionError` when it cannot take the turn. One turn at
        a time."""
        ...

    async def interrupt(self) -> bool:
        """Ask the running turn to stop; False when none runs. The turn still ends with its
        `TurnEnd`."""
        ...

    async def answer_tool(self, request: ToolRequest, *, allow: bool, message: str = "") -> None:
        """Answer a `ToolRequest`: allow it as asked, or deny it telling the agent ``message``."""
        ...

    async def answer_questions(
        self, request: QuestionRequest, answers: Mapping[str, str] | None, message: str = ""
    ) -> None:
        """Answer a `QuestionRequest` with each question's answer (keyed by its text), or,
        with None, tell the agent ``message`` (nobody answered)."""
        ...

    async def answer_plan(
        self, request: PlanRequest, *, approved: bool, feedback: str = ""
    ) -> None:
        """Approve a `PlanRequest` (the agent goes on to act), or reject it with ``feedback``."""
        ...

    async def restart(self, *, fresh: bool) -> None:
        """Between turns: end the agent and start it again, resuming its conversation, or
        in a new one when ``fresh``."""
        ...
