"""bot.render: the one place chat text is written; fences escaped one way, markup per platform."""

from __future__ import annotations

import re

import pytest

from bot.model import (
    Answerers,
    ApprovalRequested,
    Author,
    Batch,
    QuestionAsked,
    QuestionClosed,
    QuestionKind,
    QuestionOption,
    SourcePrompt,
)
from bot.render import (
    Markup,
    approval_text,
    batch_header,
    closed_question_text,
    escape_fences,
    fenced,
    question_text,
    shell_output,
)

FENCE_LINE = re.compile(r"^(?:>\s*)?```", re.MULTILINE)


def _batch(prompt: str, batch_id: int = 3) -> Batch:
    return Batch(batch_id, prompt, (SourcePrompt(1, "alice", prompt),), ())


@pytest.mark.parametrize("run", ["```", "````", "`````", "``````````"])
def test_no_run_of_backticks_survives_the_escape(run: str) -> None:
    escaped = escape_fences(f"a {run} b")
    assert "```" not in escaped
    assert escaped.replace("\u200b", "") == f"a {run} b"


def test_fenced_text_cannot_close_its_fence() -> None:
    block = fenced("print(1)\n```\nrm -rf /\n````")
    assert len(FENCE_LINE.findall(block)) == 2  # its own opening and closing only


def test_shell_output_is_fenced_then_summarised() -> None:
    text = shell_output("cat x", "```\nhi\n", "exit 0 in 0.1 s")
    assert text.startswith("```\n$ cat x\n")
    assert text.endswith("\n```\nexit 0 in 0.1 s")
    assert len(FENCE_LINE.findall(text)) == 2


def test_a_header_that_cuts_a_code_block_closes_its_fence() -> None:
    """Found by a Slack client test: the rest of the message became code on Discord."""
    prompt = "fix this:\n```python\n" + "\n".join(f"x{i} = {i}" for i in range(20)) + "\n```"
    header = batch_header(_batch(prompt), 2000)

    assert len(FENCE_LINE.findall(header)) % 2 == 0
    assert header.splitlines()[-2:] == ["> …", "> ```"]


def test_a_header_with_a_whole_code_block_is_left_as_it_is() -> None:
    prompt = "run\n```\nmake test\n```"
    header = batch_header(_batch(prompt), 2000)
    assert header.splitlines()[1:] == ["> run", "> ```", "> make test", "> ```"]


@pytest.mark.parametrize(
    ("markup", "title"), [(Markup.MARKDOWN, "**Batch 3**"), (Markup.SLACK, "*Batch 3*")]
)
def test_the_header_is_bold_in_each_platforms_markup(markup: Markup, title: str) -> None:
    assert batch_header(_batch("fix it"), 2000, markup).startswith(f"{title} — alice\n")


def _question(
    kind: QuestionKind = QuestionKind.CHOICE, text: str = "Which database?"
) -> QuestionAsked:
    return QuestionAsked(
        question_id=7,
        batch_id=3,
        kind=kind,
        header="Choice",
        text=text,
        options=(QuestionOption("SQLite", "one file"), QuestionOption("Postgres")),
        multi_select=False,
        answerers=Answerers.AUTHORS,
        mention=(Author("chat", "alice", "alice"),),
        timeout_s=600.0,
    )


def test_a_question_as_a_plain_message_lists_its_options_and_how_to_answer() -> None:
    text = question_text(_question(), 2000)
    assert text.splitlines() == [
        "❓ **Question 7** (Choice): Which database?",
        "1. SQLite: one file",
        "2. Postgres",
        "The batch's authors, approvers and the host answer with "
        "`/concordia answer 7 <number or your own words>`; the first answer counts.",
    ]
    closed = closed_question_text(text, QuestionClosed(7, 3, True, "alice answered: SQLite"), 2000)
    assert closed.splitlines()[-1] == "✅ alice answered: SQLite"
    assert "/concordia answer" not in closed


def test_a_long_question_is_cut_but_keeps_how_to_answer_and_pings_nobody() -> None:
    text = question_text(_question(text="@everyone " + "x" * 5000), 500)
    assert len(text) <= 500
    assert text.endswith("the first answer counts.")
    assert "@everyone" not in text


def test_a_plan_says_feedback_rejects_it() -> None:
    text = question_text(_question(QuestionKind.PLAN, "Claude's plan is above."), 2000)
    assert text.startswith("📋 **Plan 7**: Claude's plan is above.")
    assert "<number or reject with your feedback>" in text


def test_an_approval_with_mass_mentions_stays_within_the_limit() -> None:
    approval = ApprovalRequested(
        approval_id=4,
        batch_id=1,
        tool="Bash",
        summary="run `echo @everyone`",
        detail="echo @everyone @here " * 200,
        needed=1,
        requesters=(),
        timeout_s=120.0,
    )
    text = approval_text(approval, 500)
    assert len(text) <= 500
    assert "@everyone" not in text
    assert "@here" not in text
