"""stream-json, the line protocol of `claude -p --output-format stream-json`: the shapes we
read, and `TurnParser`, which turns one turn's lines into `bot.agent` events.

Invariant: this module never raises on what the CLI prints. A line that is not a JSON object
is no `StreamLine`; a field we do not read is ignored; a field we need that is missing or of
another type reads as absent (the turn goes on without it).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TypedDict, cast

from bot.agent import (
    AgentEvent,
    AskedQuestion,
    JsonValue,
    Outage,
    OutageKind,
    PlanRequest,
    QuestionRequest,
    TextDelta,
    ToolRequest,
    ToolUse,
    TurnEnd,
    Usage,
)
from bot.model import QuestionOption, TurnStatus

__all__ = [
    "AssistantLine",
    "ControlRequestLine",
    "ResultLine",
    "StreamEventLine",
    "StreamLine",
    "TurnParser",
    "parse_line",
]

# Tool input keys whose value, first line only, says what a call does (in this order).
_SUMMARY_KEYS = ("command", "file_path", "path", "pattern", "url", "description")
_SUMMARY_CHARS = 200
# Tools that ask the user rather than act: their calls come as questions, not as tool use.
_ASK_TOOL = "AskUserQuestion"
_PLAN_TOOL = "ExitPlanMode"


# -- the shapes (only the fields we read) --------------------------------------------------


class StreamLine(TypedDict, total=False):
    """Any line: its kind (which of the shapes below it has) and its conversation."""

    type: str  # stream_event, assistant, result, control_request, system, user, ...
    session_id: str


class _Delta(TypedDict, total=False):
    type: str  # "text_delta" carries text; others (input_json_delta, thinking) are skipped
    text: str


class _ApiEvent(TypedDict, total=False):
    """One event of the Messages API stream, as ``--include-partial-messages`` relays it."""

    type: str  # message_start, content_block_delta, ...
    delta: _Delta


class StreamEventLine(StreamLine, total=False):
    event: _ApiEvent


class _ContentBlock(TypedDict, total=False):
    type: str  # "tool_use" is read; "text" repeats what the deltas streamed
    id: str
    name: str
    input: JsonValue


class _Message(TypedDict, total=False):
    content: list[_ContentBlock]


class AssistantLine(StreamLine, total=False):
    """A whole model message, once streamed; read for its tool calls."""

    message: _Message


class _UsageCounts(TypedDict, total=False):
    input_tokens: int
    output_tokens: int


class ResultLine(StreamLine, total=False):
    """The end of a turn. An API failure can come as ``subtype: success`` with ``is_error``."""

    subtype: str  # success, error_during_execution, error_max_turns, ...
    is_error: bool
    result: str
    errors: list[str]
    total_cost_usd: float  # the running total of the process, not this turn's alone
    usage: _UsageCounts  # this turn's
    api_error_status: int | None  # the API's HTTP status when it refused the turn (429, 529)


class _CanUseTool(TypedDict, total=False):
    subtype: str  # "can_use_tool" is a permission request; others are not for us
    tool_name: str
    input: JsonValue
    tool_use_id: str


class ControlRequestLine(StreamLine, total=False):
    """The CLI asks us something over the control channel (``--permission-prompt-tool``)."""

    request_id: str
    request: _CanUseTool


def parse_line(text: str) -> StreamLine | None:
    """The stream-json line ``text`` is, or None when it is not a JSON object (a warning the
    CLI printed, an API error in some versions)."""
    try:
        line = json.loads(text)
    except json.JSONDecodeError:
        return None
    # Every field is optional, and each one read is checked where it is read.
    return cast(StreamLine, line) if isinstance(line, dict) else None


# -- the parser ---------------------------------------------------------------------------


class TurnParser:
    """Turns one turn's stream-json lines into events; pure, so transcripts can test it.

    Text comes from the partial-message deltas (the full ``assistant`` message repeats
    it and is used only for tool calls). A turn of several model messages (text, tool,
    text) gets a paragraph break between them. The ``result`` line ends the turn.
    """

    def __init__(self, *, cost_before_usd: float = 0.0) -> None:
        """``cost_before_usd``: the process's running cost before this turn, which the
        ``result`` line's ``total_cost_usd`` includes (it grows turn by turn)."""
        self.was_interrupted = False
        self._cost_before_usd = cost_before_usd
        self._limit_resets_at: datetime | None = None  # a rejecting rate_limit_event's
        self._has_text = False
        self._needs_separator = False
        # ExitPlanMode's permission request comes without the plan: its tool_use block has it.
        self._plans: dict[str, str] = {}

    def feed(self, line: Mapping[str, object]) -> list[AgentEvent]:
        """The events of one decoded line (a `StreamLine`; any JSON object will do)."""
        # Each cast follows the check of the line's kind; its fields stay optional.
        match line.get("type"):
            case "stream_event":
                return self._stream_event(cast(StreamEventLine, line))
            case "assistant":
                return self._tool_uses(cast(AssistantLine, line))
            case "result":
                result = cast(ResultLine, line)
                end = _turn_end(result, self.was_interrupted, self._cost_before_usd)
                outage = _outage(result, self._limit_resets_at)
                return [dataclasses.replace(end, outage=outage) if outage else end]
            case "rate_limit_event":
                self._limit_resets_at = _rejected_until(line) or self._limit_resets_at
                return []
            case "control_request":
                return self._tool_requests(cast(ControlRequestLine, line))
            case _:
                return []

    def _tool_uses(self, line: AssistantLine) -> list[AgentEvent]:
        message = line.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            return []
        events: list[AgentEvent] = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "tool_use":
                continue
            name, tool_input = str(block.get("name", "?")), block.get("input")
            if name == _PLAN_TOOL and isinstance(tool_input, dict):
                self._plans[str(block.get("id", ""))] = str(tool_input.get("plan") or "")
            elif name != _ASK_TOOL:
                events.append(ToolUse(name, _summarize(tool_input)))
        return events

    def _tool_requests(self, line: ControlRequestLine) -> list[AgentEvent]:
        request = line.get("request")
        if not isinstance(request, dict) or request.get("subtype") != "can_use_tool":
            return []
        request_id = str(line.get("request_id", ""))
        tool = str(request.get("tool_name", "?"))
        raw_input = request.get("input")
        tool_input: dict[str, JsonValue] = raw_input if isinstance(raw_input, dict) else {}
        tool_use_id = str(request.get("tool_use_id", ""))
        if tool == _PLAN_TOOL:
            plan = str(tool_input.get("plan") or self._plans.get(tool_use_id, ""))
            return [PlanRequest(request_id, plan, tool_input)]
        if tool == _ASK_TOOL and (questions := _questions(tool_input)):
            return [QuestionRequest(request_id, questions, tool_input)]
        # A question we cannot read is still a tool call: the approvers decide on it.
        return [ToolRequest(request_id, tool, tool_input, tool_use_id)]

    def _stream_event(self, line: StreamEventLine) -> list[AgentEvent]:
        event = line.get("event")
        if not isinstance(event, dict):
            return []
        if event.get("type") == "message_start" and self._has_text:
            self._needs_separator = True
        delta = event.get("delta")
        if event.get("type") != "content_block_delta" or not isinstance(delta, dict):
            return []
        if delta.get("type") != "text_delta":
            return []
        text = str(delta.get("text", ""))
        if not text:
            return []
        if self._needs_separator:
            text = "\n\n" + text
            self._needs_separator = False
        self._has_text = True
        return [TextDelta(text)]


def _questions(tool_input: Mapping[str, JsonValue]) -> tuple[AskedQuestion, ...]:
    """AskUserQuestion's ``questions``, or () when any of them is not the shape we know."""
    raw = tool_input.get("questions")
    if not isinstance(raw, list) or not raw:
        return ()
    asked = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            return ()
        options = item.get("options")
        if not isinstance(options, list):
            return ()
        choices = tuple(
            QuestionOption(str(o.get("label", "")), str(o.get("description") or ""))
            for o in options
            if isinstance(o, dict) and o.get("label")
        )
        asked.append(
            AskedQuestion(
                question=str(item["question"]),
                header=str(item.get("header") or ""),
                options=choices,
                multi_select=item.get("multiSelect") is True,
            )
        )
    return tuple(asked)


def _turn_end(line: ResultLine, was_interrupted: bool, cost_before_usd: float) -> TurnEnd:
    text = str(line.get("result") or "")
    usage = _usage(line, cost_before_usd)
    if was_interrupted and line.get("subtype") != "success":
        return TurnEnd(TurnStatus.INTERRUPTED, text, usage=usage)
    if line.get("is_error") or line.get("subtype") != "success":
        errors = line.get("errors")
        detail = text or ("; ".join(map(str, errors)) if isinstance(errors, list) else "")
        error = detail or str(line.get("subtype", "error"))
        return TurnEnd(TurnStatus.ERROR, text, error, usage=usage)
    return TurnEnd(TurnStatus.SUCCESS, text, usage=usage)


# "Claude AI usage limit reached|1767222000": the reset time of older CLIs' message.
_USAGE_LIMIT_RESET = re.compile(r"usage limit reached\|(\d{9,11})", re.IGNORECASE)
_USAGE_LIMIT_WORDS = ("usage limit", "hit your limit", "out of extra usage")


def _rejected_until(line: Mapping[str, object]) -> datetime | None:
    """When a ``rate_limit_event`` that rejects says the limit resets; None otherwise.

    Seen as ``{"type":"rate_limit_event","rate_limit_info":{"status":"rejected",
    "resetsAt":1778565600,"rateLimitType":"five_hour",...}}`` (subscription accounts;
    "allowed" and "allowed_warning" events are informational)."""
    info = line.get("rate_limit_info")
    if not isinstance(info, dict) or info.get("status") != "rejected":
        return None
    return _epoch(info.get("resetsAt"))


def _epoch(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _outage(line: ResultLine, limit_resets_at: datetime | None) -> Outage | None:
    """Why the API would not answer this turn, if that is why it failed.

    The CLI ends such a turn with ``is_error`` and ``api_error_status`` (429, 529) and the
    API's message as ``result``; a subscription's usage limit comes with a rejecting
    ``rate_limit_event`` (its reset time) or says so in the message."""
    if not line.get("is_error"):
        return None
    text = str(line.get("result") or "")
    legacy = _USAGE_LIMIT_RESET.search(text)
    if limit_resets_at is not None or legacy or any(w in text.lower() for w in _USAGE_LIMIT_WORDS):
        return Outage(OutageKind.USAGE_LIMIT, limit_resets_at or _epoch(legacy and legacy[1]))
    match line.get("api_error_status"):
        case 429:
            return Outage(OutageKind.RATE_LIMITED)
        case 529 | 503:
            return Outage(OutageKind.OVERLOADED)
        case _:
            return None


def _usage(line: ResultLine, cost_before_usd: float) -> Usage | None:
    """The turn's token counts and cost, when the result line has them."""
    counts = line.get("usage")
    total = line.get("total_cost_usd")
    cost = None
    if isinstance(total, int | float) and not isinstance(total, bool):
        cost = round(max(0.0, float(total) - cost_before_usd), 9)
    if not isinstance(counts, dict):
        return None if cost is None else Usage(0, 0, cost)
    return Usage(_count(counts.get("input_tokens")), _count(counts.get("output_tokens")), cost)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _summarize(tool_input: object) -> str:
    if isinstance(tool_input, dict):
        for key in _SUMMARY_KEYS:
            if key in tool_input:
                value = tool_input[key]
                return str(value).splitlines()[0][:_SUMMARY_CHARS] if value else ""
    return json.dumps(tool_input)[:_SUMMARY_CHARS] if tool_input is not None else ""
