"""The Gemini CLI's stream-json lines (``gemini --output-format stream-json``) and
`GeminiTurnParser`, the pure parser that turns one turn's lines into `bot.agent` events.

`agents.gemini` runs the CLI and feeds this module what it prints; nothing here touches a
process, so transcripts can test it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TypedDict, cast

from bot.agent import (
    AgentEvent,
    JsonValue,
    Outage,
    OutageKind,
    TextDelta,
    ToolUse,
    TurnEnd,
    Usage,
)
from bot.model import TurnStatus

__all__ = ["GeminiTurnParser", "parse_line"]

log = logging.getLogger(__name__)

# Tool parameters whose value, first line only, says what a call does (in this order).
_SUMMARY_KEYS = ("command", "file_path", "dir_path", "path", "pattern", "query", "url", "prompt")
_SUMMARY_CHARS = 200
# An API error as the CLI formats it (parseAndFormatApiError): "[API Error: <message>]",
# for a 429 followed by its advice ("Please wait and try again later…").
_API_ERROR = "[API Error:"
_RATE_LIMIT_WORDS = (
    "please wait and try again later",
    "possible quota limitations",
    "resource has been exhausted",
    "resource_exhausted",
    "exceeded your current quota",
)
_DAILY_QUOTA_WORDS = ("daily quota",)
_OVERLOADED_WORDS = ("overloaded", "(status: unavailable)", '"status":"unavailable"')
_RETRY_AFTER = re.compile(r"(?:Suggested retry after|Please retry in) ([0-9.]+)(ms|s)\b")


# -- the stream-json lines (only the fields we read) ------------------------------------------


class _Line(TypedDict, total=False):
    type: str  # init, message, tool_use, tool_result, error, result


class _InitLine(_Line, total=False):
    session_id: str


class _MessageLine(_Line, total=False):
    role: str  # "user" (the prompt, echoed) or "assistant" (a delta of the answer)
    content: str


class _ToolUseLine(_Line, total=False):
    tool_name: str
    parameters: JsonValue


class _ErrorLine(_Line, total=False):
    message: str  # a warning, or why the turn is failing (the result may not say)


class _ResultError(TypedDict, total=False):
    message: str


class _Stats(TypedDict, total=False):
    input_tokens: int  # prompt tokens of every model call in the process
    output_tokens: int


class _ResultLine(_Line, total=False):
    status: str  # "success" or "error"
    error: _ResultError
    stats: _Stats


class GeminiTurnParser:
    """Turns one turn's stream-json lines into events; pure, so transcripts can test it.

    The answer is the assistant message deltas; text after a tool call starts a new
    paragraph. The ``result`` line ends the turn with that text (it carries none itself),
    its error, or the last ``error`` line's message (an invalid stream ends so).
    """

    def __init__(self) -> None:
        self.session_id: str | None = None  # the init line's
        self.was_interrupted = False
        self._text: list[str] = []
        self._needs_separator = False
        self._last_error = ""

    @property
    def text(self) -> str:
        """The answer so far."""
        return "".join(self._text)

    def feed(self, line: Mapping[str, object]) -> list[AgentEvent]:
        """The events of one decoded line (any JSON object will do; unknown ones give none)."""
        # Each cast follows the check of the line's kind; its fields stay optional.
        match line.get("type"):
            case "init":
                session_id = cast(_InitLine, line).get("session_id")
                if isinstance(session_id, str) and session_id:
                    self.session_id = session_id
                return []
            case "message":
                return self._message(cast(_MessageLine, line))
            case "tool_use":
                tool = cast(_ToolUseLine, line)
                if self._text:
                    self._needs_separator = True
                return [
                    ToolUse(str(tool.get("tool_name", "?")), _summarize(tool.get("parameters")))
                ]
            case "error":
                message = cast(_ErrorLine, line).get("message")
                if isinstance(message, str) and message:
                    self._last_error = message
                return []
            case "result":
                return [self._end(cast(_ResultLine, line))]
            case "tool_result":
                return []
            case other:
                log.debug("the Gemini CLI printed an unknown line type %r", other)
                return []

    def _message(self, line: _MessageLine) -> list[AgentEvent]:
        content = line.get("content")
        if line.get("role") != "assistant" or not isinstance(content, str) or not content:
            return []
        if self._needs_separator:
            content = "\n\n" + content
            self._needs_separator = False
        self._text.append(content)
        return [TextDelta(content)]

    def _end(self, line: _ResultLine) -> TurnEnd:
        usage = _usage(line.get("stats"))
        if line.get("status") == "success":
            return TurnEnd(TurnStatus.SUCCESS, self.text, usage=usage)
        if self.was_interrupted:
            return TurnEnd(TurnStatus.INTERRUPTED, self.text, usage=usage)
        error = line.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str) or not message:
            message = self._last_error or "the Gemini CLI reported an error"
        return TurnEnd(TurnStatus.ERROR, self.text, message, usage, _outage(message))


def _usage(stats: object) -> Usage | None:
    if not isinstance(stats, dict):
        return None
    return Usage(_count(stats.get("input_tokens")), _count(stats.get("output_tokens")))


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _outage(message: str) -> Outage | None:
    """Why the API would not answer, when ``message`` is an API error saying so.

    The CLI ends such a turn with ``[API Error: …]``; a 429 gets its rate-limit advice and,
    when the API sent a RetryInfo, "Suggested retry after 20s."; a daily quota is "You have
    exhausted your daily quota"."""
    if not message.startswith(_API_ERROR):
        return None
    lowered = message.lower()
    if any(word in lowered for word in _DAILY_QUOTA_WORDS):
        return Outage(OutageKind.USAGE_LIMIT)
    if any(word in lowered for word in _RATE_LIMIT_WORDS):
        return Outage(OutageKind.RATE_LIMITED, _retry_at(message))
    if any(word in lowered for word in _OVERLOADED_WORDS):
        return Outage(OutageKind.OVERLOADED, _retry_at(message))
    return None


def _retry_at(message: str) -> datetime | None:
    found = _RETRY_AFTER.search(message)
    if found is None:
        return None
    try:
        seconds = float(found[1]) / (1000 if found[2] == "ms" else 1)
    except ValueError:
        return None
    return datetime.now(UTC) + timedelta(seconds=seconds)


def _summarize(parameters: object) -> str:
    if isinstance(parameters, dict):
        for key in _SUMMARY_KEYS:
            value = parameters.get(key)
            if value:
                return str(value).splitlines()[0][:_SUMMARY_CHARS]
    return json.dumps(parameters)[:_SUMMARY_CHARS] if parameters is not None else ""


def parse_line(text: str) -> Mapping[str, object] | None:
    """The JSON object ``text`` is, or None (a warning or a command's output, not stream-json)."""
    try:
        line = json.loads(text)
    except ValueError:
        return None
    return cast(Mapping[str, object], line) if isinstance(line, dict) else None
