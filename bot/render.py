"""All chat text the core writes about a batch: its header, an approval, the final status.

Invariant: what a participant or Claude wrote is quoted so it cannot ping a whole channel or
break out of the block it is shown in.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import assert_never

from bot.agent import Outage, OutageKind
from bot.model import (
    Answerers,
    ApprovalRequested,
    ApprovalResolved,
    Batch,
    BatchDone,
    QuestionAsked,
    QuestionClosed,
    QuestionKind,
    TurnStatus,
)
from bot.safety import neutralize_mentions

__all__ = [
    "FENCE",
    "Markup",
    "approval_text",
    "batch_header",
    "bold",
    "closed_approval_text",
    "escape_fences",
    "fenced",
    "outage_notice",
    "shell_output",
    "status_line",
]

FENCE = "```"
_FENCE_RUN = re.compile(r"`{3,}")
_FENCE_LINE = re.compile(r"^\s*(?:>\s*)?```")


class Markup(enum.StrEnum):
    """How a platform marks text up; the core writes each platform's own."""

    MARKDOWN = "markdown"  # Discord, the terminal: **bold**
    SLACK = "slack"  # Slack's mrkdwn: *bold*


def bold(text: str, markup: Markup) -> str:
    match markup:
        case Markup.MARKDOWN:
            return f"**{text}**"
        case Markup.SLACK:
            return f"*{text}*"
        case _:
            assert_never(markup)


def escape_fences(text: str) -> str:
    """``text`` unable to end the fence it is shown in: a zero-width space goes between the
    backticks of every run of three or more (a plain replace of ``` leaves a fence in ````)."""
    return _FENCE_RUN.sub(lambda run: "\u200b".join(run.group()), text)


def fenced(text: str) -> str:
    """``text`` as a code block it cannot break out of."""
    return f"{FENCE}\n{escape_fences(text)}\n{FENCE}"


def shell_output(command: str, output: str, summary: str) -> str:
    """A shell run for chat: the command and its output fenced, then how it ended."""
    body = f"$ {command}\n{output.rstrip()}"
    return f"{fenced(body)}\n{summary}"


def _closed_fences(lines: list[str]) -> list[str]:
    """``lines`` with a fence that a cut left open closed again, so what follows the quote
    is not shown as code."""
    opened = sum(1 for line in lines if _FENCE_LINE.match(line)) % 2 == 1
    return [*lines, FENCE] if opened else lines


_HEADER_PROMPT_CHARS = 300
_HEADER_PROMPT_LINES = 8
_HEADER_PART_CHARS = 120
_HEADER_AUTHORS = 10
_STATUS_DETAIL_CHARS = 200


def batch_header(batch: Batch, max_chars: int, markup: Markup = Markup.MARKDOWN) -> str:
    """ "**Batch 12** — alice, bob" and the merged prompt, capped and quoted line by line; a
    code fence the cap cuts through is closed."""
    names = batch.authors
    authors = ", ".join(names[:_HEADER_AUTHORS])
    if len(names) > _HEADER_AUTHORS:
        authors += f" and {len(names) - _HEADER_AUTHORS} more"
    title = bold(f"Batch {batch.batch_id}", markup)
    if batch.is_rerun:
        title += f" (re-run after a restart, attempt {batch.attempt})"
    if batch.groups and len(batch.sources) > 1:
        lines = _merge_lines(batch)
    else:
        prompt = batch.prompt.strip()
        if len(prompt) > _HEADER_PROMPT_CHARS:
            prompt = prompt[: _HEADER_PROMPT_CHARS - 1].rstrip() + "…"
        lines = prompt.splitlines()
    if len(lines) > _HEADER_PROMPT_LINES:
        lines = [*lines[:_HEADER_PROMPT_LINES], "…"]
    lines = _closed_fences(lines)
    quoted = "\n".join(f"> {line}" if line.strip() else ">" for line in lines)
    header = neutralize_mentions(f"{title} — {authors}" + (f"\n{quoted}" if quoted else ""))
    if len(header) > max_chars:
        header = header[: max_chars - 1] + "…"
    return header


def _merge_lines(batch: Batch) -> list[str]:
    """One line per part of a merged batch: its instruction and the prompts merged into it.

    "1. fix the login test ← #12 alice, #14 bob", then a line for the reactions counted.
    """
    author = {s.prompt_id: s.author for s in batch.sources}
    lines = []
    for number, group in enumerate(batch.groups, start=1):
        first = group.instruction.strip().splitlines()[0] if group.instruction.strip() else ""
        if len(first) > _HEADER_PART_CHARS:
            first = first[: _HEADER_PART_CHARS - 1].rstrip() + "…"
        merged = ", ".join(f"#{i} {author.get(i, '?')}" for i in group.prompt_ids)
        lines.append(f"{number}. {first} ← {merged}")
    grouped = {i for g in batch.groups for i in g.prompt_ids}
    reactions = [f"#{s.prompt_id} {s.author}" for s in batch.sources if s.prompt_id not in grouped]
    if reactions:
        lines.append(f"reactions: {', '.join(reactions)}")
    return lines


def approval_text(approval: ApprovalRequested, max_chars: int) -> str:
    """An approval as a plain message: what Claude wants, and how to answer."""
    quorum = (
        f"needs {approval.needed} different approvers"
        if approval.needed > 1
        else "needs one approver"
    )
    detail = neutralize_mentions(escape_fences(approval.detail))  # before the cut: it adds text
    answer = (
        f"Approvers answer with `/concordia approve {approval.approval_id} allow`, "
        f"`always` or `deny`; {quorum}; no answer in {approval.timeout_s:g} s denies it."
    )
    summary = neutralize_mentions(approval.summary)
    head = f"🔐 **Approval {approval.approval_id}**: Claude wants to {summary}"
    room = max_chars - len(head) - len(answer) - 12
    if len(detail) > room:
        detail = detail[: max(0, room - 1)] + "…"
    return f"{head}\n```\n{detail}\n```\n{answer}"


def closed_approval_text(text: str, resolved: ApprovalResolved, max_chars: int) -> str:
    """The approval's message once decided: its request, then the outcome instead of how
    to answer."""
    request = text.rsplit("\n", 1)[0]
    mark = "✅" if resolved.allowed else "⛔"
    line = neutralize_mentions(f"{mark} {resolved.text}")
    return (request[: max_chars - len(line) - 1] + "\n" + line)[:max_chars]


_ANSWERERS = {
    Answerers.AUTHORS: "the batch's authors, approvers and the host",
    Answerers.MEMBERS: "anyone in the party",
    Answerers.APPROVERS: "approvers and the host",
}


def question_lines(question: QuestionAsked) -> tuple[str, list[str], str]:
    """(head, one line per option, how to answer) of a question, for any sink."""
    if question.kind is QuestionKind.PLAN:
        head = f"📋 **Plan {question.question_id}**: {question.text}"
    else:
        label = f" ({question.header})" if question.header else ""
        head = f"❓ **Question {question.question_id}**{label}: {question.text}"
    options = [
        f"{n}. {o.label}" + (f": {o.description}" if o.description else "")
        for n, o in enumerate(question.options, 1)
    ]
    several = " (several: 1,3)" if question.multi_select else ""
    words = "reject with your feedback" if question.kind is QuestionKind.PLAN else "your own words"
    how = (
        f"{_ANSWERERS[question.answerers].capitalize()} answer with "
        f"`/concordia answer {question.question_id} <number{several} or {words}>`; "
        "the first answer counts."
    )
    return head, options, how


def question_text(question: QuestionAsked, max_chars: int) -> str:
    """A question as a plain message: what Claude asks, its options, and how to answer."""
    head, options, how = question_lines(question)
    body = neutralize_mentions("\n".join([head, *options]))  # before the cut: it adds text
    room = max_chars - len(how) - 1
    if len(body) > room:
        body = body[: max(0, room - 1)] + "…"
    return f"{body}\n{how}"


def closed_question_text(text: str, closed: QuestionClosed, max_chars: int) -> str:
    """The question's message once settled: the question, then who answered what."""
    asked = text.rsplit("\n", 1)[0]
    line = neutralize_mentions(f"{'✅' if closed.answered else '⌛'} {closed.text}")
    return (asked[: max_chars - len(line) - 1] + "\n" + line)[:max_chars]


def status_line(done: BatchDone, *, has_output: bool) -> str | None:
    match done.status:
        case TurnStatus.SUCCESS:
            return None if has_output else "✓ done (no output)"
        case TurnStatus.ERROR:
            detail = neutralize_mentions(" ".join(done.detail.split()))[:_STATUS_DETAIL_CHARS]
            return f"⚠ failed: {detail}" if detail else "⚠ failed"
        case TurnStatus.INTERRUPTED:
            return "⏹ interrupted"
        case _:
            assert_never(done.status)


_OUTAGES = {
    OutageKind.USAGE_LIMIT: "Claude's usage limit is reached",
    OutageKind.RATE_LIMITED: "Claude's API is rate-limiting us",
    OutageKind.OVERLOADED: "Claude's API is overloaded",
}


def outage_notice(outage: Outage, batch_id: int, until: datetime) -> str:
    """What everyone reads when the API refused a turn and the queue is held."""
    when = until.astimezone().strftime("%H:%M:%S")
    said = "as the API said" if outage.resets_at else "then tries again"
    return (
        f"{_OUTAGES[outage.kind]}: the queue is held until {when} ({said}); prompts are still "
        f"taken, and batch {batch_id} runs again then"
    )
