"""bot.render: the one place chat text is written; fences escaped one way, markup per platform."""

from __future__ import annotations

import re

import pytest

from bot.model import Batch, SourcePrompt
from bot.render import Markup, batch_header, escape_fences, fenced, shell_output

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
