"""Splitting Markdown into platform-sized messages without breaking a code fence.

Invariant: every piece fits the limit, a fence cut at a boundary is closed at the end of one
piece and reopened (with its info string) at the start of the next, and the number of pieces
stays within one of what the text's length needs. Pure functions; no I/O.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

__all__ = ["MIN_MESSAGE_CHARS", "Span", "is_visible", "plan", "render_span", "split_message"]

MIN_MESSAGE_CHARS = 64
"""The smallest message limit `split_message` accepts: a reopened fence and its close must fit."""

# --------------------------------------------------------------------------- splitting

_FENCE = "```"
# A fence line is a line whose first non-blank characters are ```. This is CommonMark's line
# rule, which is what Claude writes; an odd number of ``` on the line toggles the state, so a
# one-line "```x```" does not.
_FENCE_START = re.compile(r"[ \t]*```")
_FENCE_LINE = re.compile(r"^[ \t]*```[^\n]*", re.MULTILINE)
# Cuts prefer a paragraph, then a line, then a word boundary, but only within the last quarter
# of the budget, and only while the stream's slack lasts (see `plan`).
_BOUNDARY_WINDOW = 0.25
# An info string longer than this is not repeated when a fence is reopened; it is not a
# language name, and repeating it could eat the budget of every part.
_MAX_INFO_CHARS = 32


@dataclass(frozen=True, slots=True)
class Span:
    """text[start:end] is one part's body; fence_in/out is the info of the fence open there."""

    start: int
    end: int
    fence_in: str | None
    fence_out: str | None
    slack_in: int  # boundary slack left when this part starts (see `plan`)


def _fence_step(line: str, fence: str | None) -> str | None:
    """The fence state after ``line``: None when outside a fence, else the open fence's info."""
    stripped = line.lstrip(" \t")
    if not stripped.startswith(_FENCE) or stripped.count(_FENCE) % 2 == 0:
        return fence
    if fence is not None:
        return None
    return stripped.rstrip().lstrip("`").strip()


def _fence_after(text: str, start: int, end: int, fence: str | None) -> str | None:
    """The fence state after text[start:end], ``fence`` being the state at ``start``."""
    for match in _FENCE_LINE.finditer(text, start, end):
        fence = _fence_step(match.group(), fence)
    return fence


def _reopen(info: str) -> str:
    return f"{_FENCE}{info if len(info) <= _MAX_INFO_CHARS else ''}\n"


def _close(body: str) -> str:
    return _FENCE if body.endswith("\n") else "\n" + _FENCE


def render_span(text: str, span: Span) -> str:
    body = text[span.start : span.end]
    head = "" if span.fence_in is None else _reopen(span.fence_in)
    tail = "" if span.fence_out is None else _close(body)
    return head + body + tail


def is_visible(text: str) -> bool:
    # Platforms refuse a message that is empty or only whitespace.
    return bool(text.strip())


def _choose_cut(
    text: str, pos: int, fence: str | None, budget: int, window: int
) -> tuple[int, str | None]:
    """Where the part starting at ``pos`` ends, and the fence state there: a boundary no
    more than ``window`` characters before the budget's end, else a hard cut.

    The choice depends on text[pos:pos + budget] and ``window`` only, so a stream that cuts
    as soon as its text overflows makes exactly the cuts `split_message` makes.
    """
    limit = min(pos + budget, len(text))
    lo = pos + budget - window
    starts = [pos]  # line starts in [pos, limit]
    states = [fence]  # the fence state at each of them
    i = pos
    while (j := text.find("\n", i, limit)) >= 0:
        state = states[-1]
        if _FENCE_START.match(text, i, j):
            state = _fence_step(text[i:j], state)
        starts.append(j + 1)
        states.append(state)
        i = j + 1

    def fits(c: int) -> tuple[bool, str | None]:
        k = bisect.bisect_right(starts, c) - 1
        state = states[k]
        if c == starts[k]:
            close_chars = len(_FENCE)
        else:
            # Never inside a fence line, and never so the next part starts like one.
            lead = text[starts[k] : c].lstrip(" \t")
            if lead.startswith(_FENCE) or _FENCE.startswith(lead):
                return False, state
            if c < len(text) and text[c] in " \t`":
                return False, state
            close_chars = len(_FENCE) + 1
        return c - pos + (0 if state is None else close_chars) <= budget, state

    line_cut: tuple[int, str | None] | None = None
    for k in range(len(starts) - 1, 0, -1):
        c = starts[k]
        if c < lo:
            break
        if c - pos + (0 if states[k] is None else len(_FENCE)) > budget:
            continue
        if not text[starts[k - 1] : c].strip():  # the line ending here is blank: a paragraph
            return c, states[k]
        if line_cut is None:
            line_cut = (c, states[k])
    if line_cut is not None:
        return line_cut
    end = limit
    while (space := text.rfind(" ", lo, end)) >= 0:
        ok, state = fits(space + 1)
        if ok:
            return space + 1, state
        end = space
    for c in range(limit, pos, -1):
        ok, state = fits(c)
        if ok:
            return c, state
    # Only a fence line longer than the whole budget gets here: cut it anyway.
    c = max(pos + 1, limit - len(_FENCE) - 1)
    return c, states[bisect.bisect_right(starts, c) - 1]


def plan(text: str, fence: str | None, max_chars: int, slack: int | None = None) -> list[Span]:
    """Cut ``text`` (which starts with ``fence`` open) into spans that render to <= max_chars.

    ``slack`` (default half of ``max_chars``) is how many characters, summed over all parts
    but the last, may go unused by cutting at a nicer boundary; each cut may spend half
    of what is left. The other half covers the fence lines of cuts inside code. Keeping the
    total below ``max_chars`` is what bounds the count at one message per ``max_chars`` of
    text plus one (issue #4); that holds while the fence lines of splits stay under half a
    message, true at Discord's and Slack's limits (about 15 characters a split).
    """
    slack = max_chars // 2 if slack is None else slack
    spans: list[Span] = []
    pos, n = 0, len(text)
    while pos < n:
        budget = max_chars - (0 if fence is None else len(_reopen(fence)))
        if n - pos <= budget:
            out = _fence_after(text, pos, n, fence)
            if n - pos + (0 if out is None else len(_close(text))) <= budget:
                spans.append(Span(pos, n, fence, out, slack))
                break
        window = min(int(budget * _BOUNDARY_WINDOW), slack // 2)
        cut, out = _choose_cut(text, pos, fence, budget, window)
        spans.append(Span(pos, cut, fence, out, slack))
        slack = max(0, slack - (budget - (cut - pos)))
        pos, fence = cut, out
    return spans


def split_message(text: str, max_chars: int) -> list[str]:
    """Split ``text`` into messages of at most ``max_chars`` characters each.

    Cuts prefer a paragraph boundary, then a line boundary, then a space, then anywhere (never
    inside a fence line), and keep each separator with the part before it. A part that ends
    inside a ``` fence is closed with ``` (after a newline if it does not end with one) and the
    next part reopens it with the same info string (e.g. ```python); those lines count against
    ``max_chars``. An unclosed fence at the end of ``text`` is closed too, so every part is
    balanced. Removing the added fence lines and joining the parts gives ``text`` back, except
    that parts with nothing visible (whitespace only) are dropped. ``""`` gives ``[]``. Pure.

    Raises:
        ValueError: ``max_chars`` is below `MIN_MESSAGE_CHARS`.
    """
    if max_chars < MIN_MESSAGE_CHARS:
        raise ValueError(f"max_chars must be at least {MIN_MESSAGE_CHARS}, got {max_chars}")
    parts = (render_span(text, span) for span in plan(text, None, max_chars))
    return [part for part in parts if is_visible(part)]
