"""Claude's questions and plans, answered by the group from chat.

The runner hands a `bot.agent.QuestionRequest` (AskUserQuestion) to `Questions.ask`, or a
`bot.agent.PlanRequest` (ExitPlanMode) to `Questions.review_plan`. Each question is stored,
published as a `QuestionAsked` and settled by the first valid `Questions.answer` (a button,
a frame, `/concordia answer`), by the timeout (Claude is told nobody answered) or by a
cancel. Who may answer is ``questions.answerers``; a plan is for approvers and the host.
Participants' words reach Claude as the answer only, never as instructions to us.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bot.agent import AskedQuestion, PlanRequest, QuestionRequest
from bot.config import QuestionSettings
from bot.model import (
    Answerers,
    Author,
    Batch,
    CommandResult,
    Notice,
    PartyEvent,
    QuestionAsked,
    QuestionClosed,
    QuestionKind,
    QuestionOption,
    QuestionOutcome,
    Role,
)
from bot.safety import Redactor, UnsafeInput, sanitize_prompt, strip_controls
from bot.store import Store

__all__ = ["Questions", "parse_answer"]

log = logging.getLogger(__name__)

_TEXT_CHARS = 1000
_ANSWER_CHARS = 2000
_PLAN_OPTIONS = (
    QuestionOption("Approve", "Claude carries out the plan"),
    QuestionOption("Reject", "Claude plans again; say what to change in your own words"),
)
_PLAN_TEXT = (
    "Claude's plan is above. Approve it to let Claude carry it out, or reject it with "
    "feedback in your own words."
)


@dataclass(frozen=True, slots=True)
class _Answer:
    """A settled question: what Claude gets, and the line the thread shows."""

    outcome: QuestionOutcome
    value: str
    line: str
    by: Author | None = None


@dataclass(slots=True, eq=False)
class _Waiting:
    asked: QuestionAsked
    authors: frozenset[tuple[str, str]]
    settled: asyncio.Future[_Answer] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def parse_answer(text: str, options: Sequence[QuestionOption], *, multi: bool) -> str:
    """The answer ``text`` stands for: an option's label (by number or label, several joined
    by ", " when ``multi``), else the words themselves."""
    labels = [o.label for o in options]

    def one(part: str) -> str | None:
        part = part.strip()
        if part.isdigit() and 1 <= int(part) <= len(labels):
            return labels[int(part) - 1]
        return next((label for label in labels if label.casefold() == part.casefold()), None)

    parts = text.split(",") if multi else [text]
    chosen = [one(p) for p in parts]
    if all(chosen):
        return ", ".join(dict.fromkeys(c for c in chosen if c))
    return text.strip()


class Questions:
    """A party's open questions. `ask` and `review_plan` run in the runner; `answer` in any
    task."""

    def __init__(
        self,
        settings: QuestionSettings,
        *,
        party: str,
        store: Store,
        redactor: Redactor,
        publish: Callable[[PartyEvent], None],
        turn_timeout_s: float,
    ) -> None:
        self._settings = settings
        self._party = party
        self._store = store
        self._redactor = redactor
        self._publish = publish
        self._timeout_s = settings.timeout_s or turn_timeout_s
        self._waiting: dict[int, _Waiting] = {}

    async def load(self) -> list[int]:
        """Close the questions a dead bot left waiting; their ids (the batch asks again)."""
        abandoned = await self._store.abandon_open_questions(self._party)
        if abandoned:
            log.info("closed %d question(s) left waiting by the last run", len(abandoned))
        return abandoned

    def waiting(self) -> list[QuestionAsked]:
        return [w.asked for w in self._waiting.values() if not w.settled.done()]

    async def ask(self, request: QuestionRequest, *, batch: Batch) -> dict[str, str] | str:
        """Put each question to the group: the answers by question, or what to tell Claude
        when not all were answered."""
        waiting = [await self._open(batch, QuestionKind.CHOICE, q) for q in request.questions]
        answers = await self._settle(waiting)
        if all(a.outcome is QuestionOutcome.ANSWERED for a in answers):
            return {q.question: a.value for q, a in zip(request.questions, answers, strict=True)}
        given = "; ".join(
            f'"{q.question}" = "{a.value}"'
            for q, a in zip(request.questions, answers, strict=True)
            if a.outcome is QuestionOutcome.ANSWERED
        )
        reason = next(a.value for a in answers if a.outcome is not QuestionOutcome.ANSWERED)
        return f"{reason}{f' Answers given: {given}.' if given else ''}"

    async def review_plan(self, request: PlanRequest, *, batch: Batch) -> tuple[bool, str]:
        """Ask approvers about the plan (shown just above in the output): (approved,
        feedback for Claude when it is not)."""
        del request  # the plan itself went out as the turn's output
        plan = AskedQuestion(_PLAN_TEXT, "Plan", _PLAN_OPTIONS)
        (answer,) = await self._settle([await self._open(batch, QuestionKind.PLAN, plan)])
        if answer.outcome is QuestionOutcome.ANSWERED and answer.value == _PLAN_OPTIONS[0].label:
            return True, ""
        return False, answer.value

    def answer(self, question_id: int, author: Author, role: Role, text: str) -> CommandResult:
        """Count one participant's answer; the reply is for that participant only."""
        waiting = self._waiting.get(question_id)
        if waiting is None or waiting.settled.done():
            return CommandResult("answer", False, f"question {question_id} is not waiting")
        asked = waiting.asked
        if refusal := self._refusal(waiting, author, role):
            return CommandResult("answer", False, refusal)
        try:
            words = sanitize_prompt(text).strip()
        except UnsafeInput as exc:
            return CommandResult("answer", False, str(exc))
        if not words:
            options = ", ".join(f"{n}. {o.label}" for n, o in enumerate(asked.options, 1))
            return CommandResult("answer", False, f"answer with a number ({options}) or words")
        if len(words) > _ANSWER_CHARS:
            return CommandResult(
                "answer", False, f"an answer may have at most {_ANSWER_CHARS} characters"
            )
        value = parse_answer(words, asked.options, multi=asked.multi_select)
        shown = self._safe(value)
        if asked.kind is QuestionKind.PLAN:
            settled = self._plan_answer(value, author)
        else:
            settled = _Answer(
                QuestionOutcome.ANSWERED, value, f"{author.name} answered: {shown}", author
            )
        waiting.settled.set_result(settled)
        return CommandResult("answer", True, f"question {question_id}: {settled.line}")

    def cancel_all(self, reason: str, outcome: QuestionOutcome = QuestionOutcome.CANCELLED) -> None:
        """Settle every waiting question (the turn is being interrupted); ABANDONED when the
        bot stops, since the batch runs again and Claude asks again."""
        for waiting in list(self._waiting.values()):
            if not waiting.settled.done():
                waiting.settled.set_result(_Answer(outcome, reason, reason))

    # -- inside --------------------------------------------------------------------------

    async def _open(self, batch: Batch, kind: QuestionKind, question: AskedQuestion) -> _Waiting:
        text = _cap(self._safe(question.question), _TEXT_CHARS)
        options = tuple(
            QuestionOption(_cap(self._safe(o.label), 100), _cap(self._safe(o.description), 200))
            for o in question.options
        )
        question_id = await self._store.open_question(
            self._party, batch.batch_id, kind, text, [o.label for o in options]
        )
        asked = QuestionAsked(
            question_id=question_id,
            batch_id=batch.batch_id,
            kind=kind,
            header=_cap(self._safe(question.header), 40),
            text=text,
            options=options,
            multi_select=question.multi_select,
            answerers=Answerers.APPROVERS
            if kind is QuestionKind.PLAN
            else self._settings.answerers,
            mention=tuple(dict.fromkeys(s.author_id for s in batch.sources)),
            timeout_s=self._timeout_s,
        )
        authors = frozenset((s.platform, s.user_id) for s in batch.sources)
        waiting = _Waiting(asked, authors)
        self._waiting[question_id] = waiting
        self._publish(asked)
        return waiting

    async def _settle(self, waiting: Sequence[_Waiting]) -> list[_Answer]:
        """Wait for every question's answer, reminding now and then, until the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        remind = self._settings.remind_every_s
        try:
            pending = {w.settled for w in waiting}
            while pending and (left := deadline - loop.time()) > 0:
                _, pending = await asyncio.wait(pending, timeout=min(left, remind or left))
                if pending and loop.time() < deadline:
                    self._remind(w for w in waiting if not w.settled.done())
            for w in waiting:
                if not w.settled.done():
                    value = (
                        f"Nobody in the team answered within {self._timeout_s:g} s. Go on with "
                        "your best judgement and say what you assumed."
                    )
                    line = f"nobody answered within {self._timeout_s:g} s"
                    w.settled.set_result(_Answer(QuestionOutcome.TIMED_OUT, value, line))
        finally:
            for w in waiting:
                self._waiting.pop(w.asked.question_id, None)
        answers = []
        for w in waiting:
            answer = w.settled.result() if w.settled.done() else None
            if answer is None:  # cancelled from outside (the runner stopped): stays open
                continue
            asked = w.asked
            await self._store.close_question(
                asked.question_id, answer.outcome, answer.value, answer.by
            )
            self._publish(
                QuestionClosed(
                    asked.question_id,
                    asked.batch_id,
                    answer.outcome is QuestionOutcome.ANSWERED,
                    answer.line,
                )
            )
            log.info("question %d: %s", asked.question_id, answer.line)
            answers.append(answer)
        return answers

    def _remind(self, waiting: Iterable[_Waiting]) -> None:
        ids = ", ".join(str(w.asked.question_id) for w in waiting)
        if ids:
            self._publish(
                Notice(
                    f"Claude is still waiting for an answer to question {ids}: answer it "
                    "with its buttons or `/concordia answer <id> <number or your words>`"
                )
            )

    def _refusal(self, waiting: _Waiting, author: Author, role: Role) -> str:
        """Why ``author`` may not answer, or ""."""
        match waiting.asked.answerers:
            case Answerers.MEMBERS:
                return ""
            case Answerers.APPROVERS if not role.may_approve:
                what = "plans" if waiting.asked.kind is QuestionKind.PLAN else "questions"
                return f"only approvers and the host answer Claude's {what} here"
            case Answerers.AUTHORS if not role.may_approve:
                if (author.platform, author.user_id) in waiting.authors:
                    return ""
                return (
                    "only the authors of this batch, approvers and the host answer this "
                    "question (questions.answerers)"
                )
        return ""

    def _plan_answer(self, value: str, author: Author) -> _Answer:
        approve, reject = (o.label for o in _PLAN_OPTIONS)
        if value == approve:
            line = f"plan approved by {author.name}"
            return _Answer(QuestionOutcome.ANSWERED, approve, line, author)
        if value == reject:
            feedback = f"{author.name} rejected the plan without saying why; ask what to change."
            return _Answer(
                QuestionOutcome.ANSWERED, feedback, f"plan rejected by {author.name}", author
            )
        feedback = f"{author.name} rejected the plan: {value}"
        return _Answer(
            QuestionOutcome.ANSWERED,
            feedback,
            f"plan rejected by {author.name}: {self._safe(value)}",
            author,
        )

    def _safe(self, text: str) -> str:
        return self._redactor.redact(strip_controls(text))


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
