"""codex app-server's messages as agent events: a turn's notifications, its approval
requests and their answers.

`agents.codex` owns the process and its JSON-RPC; it hands each notification and approval
request of the running turn to a `Turn`, and answers an approval with `answer`. Nothing here
touches the process. A field that is missing or of another type reads as absent.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from bot.agent import (
    AgentEvent,
    JsonValue,
    Outage,
    OutageKind,
    TextDelta,
    ToolRequest,
    ToolUse,
    TurnEnd,
    Usage,
)
from bot.model import TurnStatus

__all__ = [
    "APPROVALS",
    "LOG_CHARS",
    "Approval",
    "JsonObject",
    "RpcId",
    "Turn",
    "answer",
    "json_object",
    "json_str",
    "tool_request",
]

log = logging.getLogger(__name__)

LOG_CHARS = 500  # of what codex says, in one log line
_SUMMARY_CHARS = 200
_SHELLS = frozenset({"bash", "sh", "zsh"})

_COMMAND_APPROVAL = "item/commandExecution/requestApproval"
_FILE_APPROVAL = "item/fileChange/requestApproval"
_PERMISSIONS_APPROVAL = "item/permissions/requestApproval"
APPROVALS = frozenset({_COMMAND_APPROVAL, _FILE_APPROVAL, _PERMISSIONS_APPROVAL})

RpcId: TypeAlias = int | str
JsonObject: TypeAlias = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Approval:
    """An approval codex waits for: how to answer it (its method) and what was asked."""

    rpc_id: RpcId
    method: str
    params: JsonObject


# -- reading what codex says ----------------------------------------------------------------


def json_object(value: object) -> JsonObject:
    """``value`` if it is a JSON object, else an empty one: a missing field reads as absent."""
    return value if isinstance(value, dict) else {}


def json_str(value: object) -> str:
    """``value`` if it is a string, else "": a missing or mistyped field reads as empty."""
    return value if isinstance(value, str) else ""


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _json(value: object) -> JsonValue:
    """``value`` as the `bot.agent.JsonValue` it is (it came from `json.loads`)."""
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _one_line(text: str) -> str:
    return text.strip().splitlines()[0][:_SUMMARY_CHARS] if text.strip() else ""


def _shell_command(command: str) -> str:
    """The script of ``/bin/bash -lc '<script>'`` (how codex runs every command), so the
    approvers read what will run; ``command`` itself when it has another shape."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return command
    if len(argv) == 3 and Path(argv[0]).name in _SHELLS and argv[1] in ("-c", "-lc"):
        return argv[2]
    return command


def _tool_use(item: JsonObject) -> ToolUse | None:
    """The tool use an item that started is, or None for a message, reasoning and the like."""
    match item.get("type"):
        case "commandExecution":
            return ToolUse("Bash", _one_line(_shell_command(json_str(item.get("command")))))
        case "fileChange":
            changes = item.get("changes")
            paths = (
                [json_str(json_object(c).get("path")) for c in changes]
                if isinstance(changes, list)
                else []
            )
            return ToolUse("ApplyPatch", ", ".join(paths)[:_SUMMARY_CHARS])
        case "mcpToolCall":
            name = f"{json_str(item.get('server'))}.{json_str(item.get('tool'))}"
            return ToolUse(name, json.dumps(item.get("arguments"))[:_SUMMARY_CHARS])
        case "dynamicToolCall" | "collabAgentToolCall":
            return ToolUse(
                json_str(item.get("tool")) or "tool",
                _one_line(json_str(item.get("prompt")) or json.dumps(item.get("arguments"))),
            )
        case "webSearch":
            return ToolUse("WebSearch", _one_line(json_str(item.get("query"))))
        case "imageView":
            return ToolUse("ViewImage", json_str(item.get("path")))
        case _:
            return None


def tool_request(approval: Approval, items: Mapping[str, JsonObject]) -> ToolRequest:
    """The `ToolRequest` an approval codex asks for is: a command as ``Bash`` (its script as
    ``command``), a file change as ``ApplyPatch`` (the changes of its item), more
    permissions as ``Permissions``."""
    params = approval.params
    item_id = json_str(params.get("itemId"))
    request_input: dict[str, JsonValue] = {}
    if approval.method == _COMMAND_APPROVAL:
        tool = "Bash"
        request_input["command"] = _shell_command(json_str(params.get("command")))
        request_input["cwd"] = json_str(params.get("cwd"))
    elif approval.method == _FILE_APPROVAL:
        tool = "ApplyPatch"
        changes = items.get(item_id, {}).get("changes")
        request_input["changes"] = _json(changes) if isinstance(changes, list) else []
        if isinstance(changes, list) and changes:
            request_input["path"] = json_str(json_object(changes[0]).get("path"))
        if params.get("grantRoot"):
            request_input["grant_root"] = json_str(params.get("grantRoot"))
    else:
        tool = "Permissions"
        request_input["permissions"] = _json(params.get("permissions"))
        request_input["cwd"] = json_str(params.get("cwd"))
    if params.get("reason"):
        request_input["reason"] = json_str(params.get("reason"))
    return ToolRequest(str(approval.rpc_id), tool, request_input, item_id)


def answer(approval: Approval, allow: bool) -> dict[str, object]:
    """The result that answers ``approval``: once only, for this call alone."""
    if approval.method == _PERMISSIONS_APPROVAL:
        asked = json_object(approval.params.get("permissions"))
        granted = {k: v for k, v in asked.items() if v is not None} if allow else {}
        return {"permissions": granted, "scope": "turn"}
    return {"decision": "accept" if allow else "decline"}


def _outage(error: JsonObject) -> Outage | None:
    """Why the API would not answer, when that is why the turn failed: codex names it in
    ``codexErrorInfo`` (``usageLimitExceeded`` for a plan's limit or an exhausted quota;
    a 429 it gave up on comes as ``responseTooManyFailedAttempts`` with its status)."""
    info = error.get("codexErrorInfo")
    match info:
        case "usageLimitExceeded":
            return Outage(OutageKind.USAGE_LIMIT)
        case "rateLimitExceeded":
            return Outage(OutageKind.RATE_LIMITED)
        case "serverOverloaded":
            return Outage(OutageKind.OVERLOADED)
    status = next((json_object(v).get("httpStatusCode") for v in json_object(info).values()), None)
    match status:
        case 429:
            return Outage(OutageKind.RATE_LIMITED)
        case 503 | 529:
            return Outage(OutageKind.OVERLOADED)
        case _:
            return None


@dataclass
class Turn:
    """What one turn's notifications said so far, and the events they make."""

    thread_id: str
    turn_id: str = ""
    items: dict[str, JsonObject] = field(default_factory=dict)  # started items, by id
    approvals: dict[str, Approval] = field(default_factory=dict)  # waiting, by request id
    final_text: str = ""  # the latest agent message that completed
    input_tokens: int = 0
    output_tokens: int = 0
    has_usage: bool = False
    _text_item: str = ""  # the agent message the deltas are streaming
    _has_text: bool = False

    def is_ours(self, params: JsonObject) -> bool:
        """Whether a notification is about this turn (another thread's, or an earlier turn's,
        is not)."""
        thread = params.get("threadId")
        turn = params.get("turnId")
        if thread is not None and thread != self.thread_id:
            return False
        return not (turn is not None and self.turn_id and turn != self.turn_id)

    def feed(self, method: str, params: JsonObject) -> list[AgentEvent]:
        """The events of one notification (``turn/completed`` is the caller's: `end`)."""
        match method:
            case "item/agentMessage/delta":
                return self._delta(json_str(params.get("itemId")), json_str(params.get("delta")))
            case "item/started":
                item = json_object(params.get("item"))
                self.items[json_str(item.get("id"))] = item
                use = _tool_use(item)
                return [use] if use is not None else []
            case "item/completed":
                item = json_object(params.get("item"))
                if item.get("type") == "agentMessage":
                    self.final_text = json_str(item.get("text"))
                return []
            case "thread/tokenUsage/updated":
                # "last" is the latest model request's; a turn makes one per tool round.
                last = json_object(json_object(params.get("tokenUsage")).get("last"))
                self.input_tokens += _count(last.get("inputTokens"))
                self.output_tokens += _count(last.get("outputTokens"))
                self.has_usage = True
                return []
            case "error":
                if params.get("willRetry") is True:
                    message = json_str(json_object(params.get("error")).get("message"))
                    log.warning("codex retries the model request: %s", message[:LOG_CHARS])
                return []
            case _:
                return []

    def _delta(self, item_id: str, text: str) -> list[AgentEvent]:
        if not text:
            return []
        if item_id != self._text_item:
            if self._has_text:
                text = "\n\n" + text  # a new message after a tool: a paragraph apart
            self._text_item = item_id
        self._has_text = True
        return [TextDelta(text)]

    def end(self, turn: JsonObject) -> TurnEnd:
        """The `TurnEnd` of ``turn/completed``'s turn."""
        usage = Usage(self.input_tokens, self.output_tokens) if self.has_usage else None
        result = self.final_text or _last_message(turn)
        match turn.get("status"):
            case "completed":
                return TurnEnd(TurnStatus.SUCCESS, result, usage=usage)
            case "interrupted":
                return TurnEnd(TurnStatus.INTERRUPTED, result, usage=usage)
            case status:
                error = json_object(turn.get("error"))
                message = json_str(error.get("message")) or f"the turn ended {status or 'failed'}"
                if details := json_str(error.get("additionalDetails")):
                    message = f"{message} ({details})"
                return TurnEnd(TurnStatus.ERROR, result, message, usage, _outage(error))


def _last_message(turn: JsonObject) -> str:
    """The text of the turn's last agent message, as ``turn/completed`` lists its items."""
    items = turn.get("items")
    texts = [
        json_str(json_object(i).get("text"))
        for i in (items if isinstance(items, list) else [])
        if json_object(i).get("type") == "agentMessage"
    ]
    return texts[-1] if texts else ""
