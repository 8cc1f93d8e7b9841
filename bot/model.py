"""The core's vocabulary: what adapters hand in and what a party hands back out.

Everything here is a frozen dataclass or a StrEnum so that nothing mutable crosses
the boundary between an adapter and the core. Platform ids are opaque strings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Accepted",
    "Answerers",
    "ApprovalOutcome",
    "ApprovalRequested",
    "ApprovalResolved",
    "Author",
    "Batch",
    "BatchDone",
    "BatchStarted",
    "BatchState",
    "Command",
    "CommandResult",
    "CostShare",
    "Decider",
    "Decision",
    "Image",
    "Listener",
    "MergeGroup",
    "Notice",
    "OutputText",
    "PartyEvent",
    "Prompt",
    "PromptState",
    "QuestionAsked",
    "QuestionClosed",
    "QuestionKind",
    "QuestionOption",
    "QuestionOutcome",
    "RejectKind",
    "Rejected",
    "Role",
    "ShellOutcome",
    "SourcePrompt",
    "Submission",
    "TurnStatus",
]


class PromptState(enum.StrEnum):
    """A prompt's life: accepted, merged into a batch, sent to Claude, answered."""

    PENDING = "pending"
    BATCHED = "batched"
    SENT = "sent"
    DONE = "done"
    FAILED = "failed"


class BatchState(enum.StrEnum):
    """A batch's life in the store: merged, sent to Claude, then finished one way or the other.

    Stored as this text; a batch still `BATCHED` or `SENT` after a crash is run again."""

    BATCHED = "batched"
    SENT = "sent"
    DONE = "done"  # its turn succeeded or was interrupted
    FAILED = "failed"  # its turn ended in an error


class TurnStatus(enum.StrEnum):
    """How a batch's turn ended, as shown to participants."""

    SUCCESS = "success"
    ERROR = "error"
    INTERRUPTED = "interrupted"


class Role(enum.StrEnum):
    """What a participant may do: prompt; also decide on Claude's tool use (approver); also
    run host-only commands (host)."""

    PROMPTER = "prompter"
    APPROVER = "approver"
    HOST = "host"

    @property
    def may_approve(self) -> bool:
        return self is not Role.PROMPTER


class Decision(enum.StrEnum):
    """An approver's answer to a tool-use request."""

    ALLOW = "allow"  # this call, once
    ALWAYS = "always"  # this call and every identical one after, in this party, until reset
    DENY = "deny"


class ApprovalOutcome(enum.StrEnum):
    """How a tool-use request ended, as the audit trail stores it."""

    ALLOWED = "allowed"  # enough approvers allowed it
    DENIED = "denied"  # one approver denied it
    TIMED_OUT = "timed_out"  # nobody decided within approvals.timeout_s: denied
    CANCELLED = "cancelled"  # the turn was cancelled or Claude restarted: denied
    ALWAYS_RULE = "always_rule"  # a standing "always" rule allowed it without asking
    ABANDONED = "abandoned"  # the bot stopped while it waited


class QuestionKind(enum.StrEnum):
    """What Claude puts to the group."""

    CHOICE = "choice"  # a question with options (AskUserQuestion); an own answer is welcome
    PLAN = "plan"  # a plan to approve before Claude acts (ExitPlanMode)


class Answerers(enum.StrEnum):
    """Who may answer Claude's questions (``questions.answerers``); plans are for approvers."""

    AUTHORS = "authors"  # the batch's authors, and approvers and the host
    MEMBERS = "members"  # anyone who joined
    APPROVERS = "approvers"  # approvers and the host


class QuestionOutcome(enum.StrEnum):
    """How a question ended, as the store records it."""

    ANSWERED = "answered"
    TIMED_OUT = "timed_out"  # nobody answered within questions.timeout_s
    CANCELLED = "cancelled"  # the turn was cancelled or Claude restarted
    ABANDONED = "abandoned"  # the bot stopped while it waited; the batch asks again


class ShellOutcome(enum.StrEnum):
    """How a `/concordia shell` run ended, as the store records it."""

    EXITED = "exited"  # the command ended by itself (any exit status)
    TIMED_OUT = "timed_out"  # killed at shell.timeout_s
    CANCELLED = "cancelled"  # stopped by `cancel`, or its caller went away
    FAILED = "failed"  # it could not be started


@dataclass(frozen=True, slots=True)
class Author:
    """Who sent something: a platform name plus that platform's opaque user id.

    ``is_verified`` is False where the id is chosen by the client itself (a WebSocket
    name), not vouched for by the platform (a Discord or Slack account)."""

    platform: str
    user_id: str
    name: str
    is_verified: bool = True


@dataclass(frozen=True, slots=True)
class Decider:
    """One participant's decision on a tool-use request, kept in the audit trail."""

    platform: str
    user_id: str
    name: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt as an adapter hands it in.

    ``source_id`` is unique per platform message (a WebSocket client id, a Discord
    message id): the store refuses a second prompt with the same one, so a resent
    frame or a redelivered event is not queued twice. ``thread`` is where the answer
    belongs on that platform, opaque to the core.
    """

    source_id: str
    author: Author
    text: str
    thread: str = ""
    images: tuple[Image, ...] = ()


@dataclass(frozen=True, slots=True)
class Image:
    """An image a participant attached to a prompt; it reaches Claude as an image block.

    Adapters check it with `bot.images.check_image` before it gets here."""

    name: str
    media_type: str  # one the model's API accepts (bot.images.IMAGE_TYPES)
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Command:
    """A `/concordia <name> <args>` request from a participant."""

    name: str
    args: str
    author: Author
    thread: str = ""


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A command's answer. ``public`` answers (a shell command's output) are for everyone
    in the channel; the others only for the caller."""

    name: str
    ok: bool
    text: str
    public: bool = False


@dataclass(frozen=True, slots=True)
class Accepted:
    """The prompt is durably queued (or was already, when ``is_duplicate``).

    What `Store.add_prompt` returns and `Party.submit` answers. ``position`` is the prompt's
    place among the party's pending prompts when it was stored (1: next); 0 for a duplicate.
    """

    prompt_id: int
    position: int
    is_duplicate: bool = False


class RejectKind(enum.StrEnum):
    """Why a prompt was refused, so a transport can answer each kind its own way (a
    non-member gets one hint, not a reply to every mention)."""

    NOT_MEMBER = "not_member"
    PACED = "paced"  # faster than party.member_prompts_per_minute
    UNSAFE = "unsafe"  # NUL bytes or invalid UTF-8
    EMPTY = "empty"
    TOO_LONG = "too_long"  # over party.max_prompt_chars, attachments included
    OVER_BUDGET = "over_budget"  # the member spent budget.member_daily_usd today
    STOPPING = "stopping"  # the bot is shutting down: send it again once it is back


@dataclass(frozen=True, slots=True)
class Rejected:
    """The prompt was refused; ``reason`` is one line fit to show the sender."""

    reason: str
    kind: RejectKind


Submission = Accepted | Rejected


@dataclass(frozen=True, slots=True)
class SourcePrompt:
    """One accepted prompt as the merger and the batch header see it.

    ``platform`` and ``thread`` say where it came from, so each transport of a shared
    party can answer in the right place.
    """

    prompt_id: int
    author: str
    text: str
    thread: str = ""
    platform: str = ""
    user_id: str = ""  # the author's id on ``platform``, to mention them
    plan: bool = False  # sent as ``/plan <ask>``: Claude plans first, the group approves

    @property
    def author_id(self) -> Author:
        return Author(self.platform, self.user_id, self.author)


@dataclass(frozen=True, slots=True)
class CostShare:
    """One member's part of what turns cost, in US dollars."""

    platform: str
    user_id: str
    name: str
    cost_usd: float


@dataclass(frozen=True, slots=True)
class MergeGroup:
    """Source prompts that ask the same thing, and the one instruction that stands for them."""

    prompt_ids: tuple[int, ...]
    authors: tuple[str, ...]
    instruction: str


@dataclass(frozen=True, slots=True)
class Batch:
    """What one Claude turn answers: the merged prompt and every prompt it stands for."""

    batch_id: int
    prompt: str
    sources: tuple[SourcePrompt, ...]
    groups: tuple[MergeGroup, ...]
    attempt: int = 1

    @property
    def authors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.author for s in self.sources))

    @property
    def is_rerun(self) -> bool:
        return self.attempt > 1

    @property
    def wants_plan(self) -> bool:
        """A ``/plan`` prompt makes the whole turn plan first: acting waits for approval."""
        return any(s.plan for s in self.sources)


@dataclass(frozen=True, slots=True)
class BatchStarted:
    batch: Batch


@dataclass(frozen=True, slots=True)
class OutputText:
    """A piece of Claude's reply, in order, already made safe for chat."""

    batch_id: int
    text: str


@dataclass(frozen=True, slots=True)
class BatchDone:
    batch_id: int
    status: TurnStatus
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Notice:
    """Something every participant should read (a restart, a re-run, a rotated invite)."""

    message: str


@dataclass(frozen=True, slots=True)
class ApprovalRequested:
    """Claude asks to use a tool during ``batch_id``; approvers (and the host) decide.

    ``summary`` says in plain words what the tool will do ("run `rm -rf build`", "edit
    src/app.py: 3 lines → 5 lines"); ``detail`` shows the input (the command, the diff).
    Both are redacted and capped. ``needed`` distinct approvers must allow it; one deny
    denies it. ``requesters`` are the batch's authors, to be mentioned once.
    """

    approval_id: int
    batch_id: int
    tool: str
    summary: str
    detail: str
    needed: int
    requesters: tuple[Author, ...]
    timeout_s: float


@dataclass(frozen=True, slots=True)
class ApprovalResolved:
    """How an approval ended; ``text`` is one line for the thread ("allowed by alice")."""

    approval_id: int
    batch_id: int
    allowed: bool
    text: str


@dataclass(frozen=True, slots=True)
class QuestionOption:
    label: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class QuestionAsked:
    """Claude asks the group during ``batch_id``: a question with options, or a plan.

    ``text`` is the question, or the plan in Markdown; redacted and capped. An answer is one
    of ``options`` (by label or number) or, for a CHOICE, the answerer's own words; for a
    PLAN the first option approves it and anything else rejects it, own words being the
    feedback Claude gets. ``mention`` is who to mention once (the batch's authors, or the
    approvers' side for a plan)."""

    question_id: int
    batch_id: int
    kind: QuestionKind
    header: str
    text: str
    options: tuple[QuestionOption, ...]
    multi_select: bool
    answerers: Answerers
    mention: tuple[Author, ...]
    timeout_s: float


@dataclass(frozen=True, slots=True)
class QuestionClosed:
    """How a question ended; ``text`` is one line for the thread ("alice answered: SQLite")."""

    question_id: int
    batch_id: int
    answered: bool
    text: str


PartyEvent = (
    BatchStarted
    | OutputText
    | BatchDone
    | Notice
    | ApprovalRequested
    | ApprovalResolved
    | QuestionAsked
    | QuestionClosed
)


class Listener(Protocol):
    """Whoever shows a party's events (a WebSocket client, a chat thread relay).

    `deliver` must not block or raise: it queues the event for the listener's own task,
    so a slow client never holds up the runner.
    """

    def deliver(self, event: PartyEvent) -> None: ...
