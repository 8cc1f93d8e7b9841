"""bot.stream_json.TurnParser against real `claude -p --output-format stream-json` transcripts.

The transcripts in tests/payloads/claude/ were captured from the real CLI talking to the fake
Anthropic API. Each line is ``<seconds> <json>``; ``<seconds> >>> <json>`` is what was written
to the CLI's stdin. A turn ends at its ``result`` line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.agent import AgentEvent as Event
from bot.agent import PlanRequest, QuestionRequest, TextDelta, ToolRequest, ToolUse, TurnEnd, Usage
from bot.config import ClaudeSettings
from bot.model import TurnStatus
from bot.session import stream_json_command
from bot.stream_json import TurnParser, parse_line
from tests.conftest import NO_CONFINEMENT

PAYLOADS = Path(__file__).parent / "payloads" / "claude"
PARTIAL_TRANSCRIPTS = ["b_stream_json_partial.jsonl.txt", "b_stream_json_partial_2.1.331.jsonl.txt"]


@dataclass
class _Turn:
    """One turn as the parser saw it, plus the `result` line that ended it."""

    events: list[Event] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    was_interrupted: bool = False

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    @property
    def end(self) -> TurnEnd:
        ends = [e for e in self.events if isinstance(e, TurnEnd)]
        assert len(ends) == 1, "a turn has exactly one TurnEnd"
        assert self.events[-1] is ends[0], "TurnEnd is the turn's last event"
        return ends[0]


def _replay(name: str) -> list[_Turn]:
    """Feed a transcript's stdout lines to a fresh TurnParser per turn, as the session does."""
    turns: list[_Turn] = []
    parser, turn = TurnParser(), _Turn()
    for raw in (PAYLOADS / name).read_text(encoding="utf-8").splitlines():
        _, _, rest = raw.partition(" ")
        if rest.startswith(">>>"):
            sent = json.loads(rest.removeprefix(">>>"))
            if sent.get("type") == "control_request" and sent["request"]["subtype"] == "interrupt":
                parser.was_interrupted = turn.was_interrupted = True
            continue
        line = json.loads(rest)
        turn.events += parser.feed(line)
        if line.get("type") == "result":
            turn.result = line
            turns.append(turn)
            # The next turn's parser starts from this process's running cost.
            parser, turn = TurnParser(cost_before_usd=line.get("total_cost_usd", 0.0)), _Turn()
    assert not turn.events, f"{name} ends in the middle of a turn"
    return turns


def _delta(text: str) -> dict[str, Any]:
    return {
        "type": "stream_event",
        "event": {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": text},
        },
    }


def _message_start() -> dict[str, Any]:
    return {"type": "stream_event", "event": {"type": "message_start", "message": {"content": []}}}


def _feed_all(parser: TurnParser, lines: list[dict[str, Any]]) -> list[Event]:
    return [event for line in lines for event in parser.feed(line)]


# --------------------------------------------------------------------------- transcripts


def test_payloads_are_present() -> None:
    names = sorted(p.name for p in PAYLOADS.glob("b_stream_json*.jsonl.txt"))
    assert names == sorted(
        [
            "b_stream_json.jsonl.txt",
            "b_stream_json_interrupt.jsonl.txt",
            "b_stream_json_can_use_tool_2.1.331.jsonl.txt",
            # 2.1.331 asking the group (questions and plans, below):
            "b_stream_json_ask_answers_2.1.331.jsonl.txt",
            "b_stream_json_ask_denied_2.1.331.jsonl.txt",
            "b_stream_json_plan_approved_2.1.331.jsonl.txt",
            "b_stream_json_plan_rejected_2.1.331.jsonl.txt",
            # 2.1.331 refused by the API (tests/test_outage.py):
            "b_stream_json_api_429.jsonl.txt",
            "b_stream_json_api_429_rate_limit_headers.jsonl.txt",
            "b_stream_json_api_529.jsonl.txt",
            *PARTIAL_TRANSCRIPTS,
        ]
    )


def test_a_permission_request_becomes_a_tool_request() -> None:
    """Recorded from 2.1.331 with --permission-prompt-tool stdio, the call denied."""
    (turn,) = _replay("b_stream_json_can_use_tool_2.1.331.jsonl.txt")
    requests = [e for e in turn.events if isinstance(e, ToolRequest)]
    assert len(requests) == 1
    request = requests[0]
    assert request.tool == "Bash"
    assert request.input == {
        "command": "touch made.txt",
        "description": "Run the requested command",
    }
    assert request.request_id
    assert request.tool_use_id.startswith("toolu_")
    kinds = [type(e) for e in turn.events]
    assert kinds.index(ToolUse) < kinds.index(ToolRequest)
    assert turn.end.status is TurnStatus.SUCCESS
    assert "denied from chat" in turn.end.result


def test_permission_settings_become_cli_flags() -> None:
    settings = ClaudeSettings(
        command="claude",
        args=("--model", "sonnet"),
        permission_mode="acceptEdits",
        allowed_tools=("Read", "Bash(git diff:*)"),
        disallowed_tools=("WebFetch",),
    )
    command = stream_json_command(settings, "abc", NO_CONFINEMENT)
    assert command[command.index("--permission-prompt-tool") + 1] == "stdio"
    assert command[command.index("--permission-mode") + 1] == "acceptEdits"
    allowed = command.index("--allowedTools")
    assert command[allowed + 1 : allowed + 3] == ["Read", "Bash(git diff:*)"]
    assert command[command.index("--disallowedTools") + 1] == "WebFetch"
    assert command[-6:-2] == ["--model", "sonnet", "--settings", NO_CONFINEMENT.cli_settings()]
    assert command[-2:] == ["--resume", "abc"]
    assert "--permission-mode" not in stream_json_command(ClaudeSettings(), None, NO_CONFINEMENT)


@pytest.mark.parametrize("name", PARTIAL_TRANSCRIPTS)
def test_partial_deltas_add_up_to_the_result(name: str) -> None:
    turns = _replay(name)

    assert len(turns) == 3
    for turn in turns:
        assert turn.end.status is TurnStatus.SUCCESS
        assert turn.end.error == ""
        assert turn.text, "the partial transcript streams text"
        assert turn.text == turn.result["result"]
        assert turn.end.result == turn.result["result"]
        assert not [e for e in turn.events if isinstance(e, ToolUse)]
    assert turns[0].text == "ECHO: first turn hello"
    assert turns[2].text.startswith("ECHO: third turn LONG\n\n")


def test_without_partial_messages_the_result_holds_the_text() -> None:
    turns = _replay("b_stream_json.jsonl.txt")

    assert len(turns) == 3
    for turn in turns:
        assert [e for e in turn.events if isinstance(e, TextDelta)] == []
        assert turn.end.status is TurnStatus.SUCCESS
        assert turn.end.result == turn.result["result"]
        assert turn.end.result.startswith("ECHO: ")


def test_interrupted_turn_ends_interrupted_and_the_next_one_succeeds() -> None:
    interrupted, after = _replay("b_stream_json_interrupt.jsonl.txt")

    assert interrupted.was_interrupted
    assert interrupted.result["subtype"] == "error_during_execution"
    assert interrupted.end.status is TurnStatus.INTERRUPTED
    # What streamed before and just after the interrupt is kept, in order.
    assert interrupted.text == "ECHO: SLOW interrupt me ."

    assert not after.was_interrupted
    assert after.end.status is TurnStatus.SUCCESS
    assert after.text == after.end.result == "ECHO: next after interrupt"


def test_error_during_execution_without_an_interrupt_is_an_error() -> None:
    interrupted, _ = _replay("b_stream_json_interrupt.jsonl.txt")
    result = interrupted.result

    [end] = TurnParser().feed(result)

    assert isinstance(end, TurnEnd)
    assert end.status is TurnStatus.ERROR
    assert end.error == "; ".join(result["errors"])
    assert end.error


# --------------------------------------------------------------------------- result lines


def test_api_error_reported_as_success_is_an_error() -> None:
    # `claude -p` reports an API failure as subtype success with is_error set.
    message = "API Error: 500 fake internal error. This is a server-side issue, usually temporary"
    line = {"type": "result", "subtype": "success", "is_error": True, "result": message}

    [end] = TurnParser().feed(line)

    assert end == TurnEnd(TurnStatus.ERROR, message, message)


def test_api_error_after_an_interrupt_is_still_an_error() -> None:
    parser = TurnParser()
    parser.was_interrupted = True
    line = {"type": "result", "subtype": "success", "is_error": True, "result": "API Error: 529"}

    [end] = parser.feed(line)

    assert isinstance(end, TurnEnd)
    assert end.status is TurnStatus.ERROR
    assert end.error == "API Error: 529"


def test_interrupt_that_came_too_late_is_a_success() -> None:
    parser = TurnParser()
    parser.was_interrupted = True
    line = {"type": "result", "subtype": "success", "is_error": False, "result": "done"}

    assert parser.feed(line) == [TurnEnd(TurnStatus.SUCCESS, "done")]


def test_error_without_message_names_its_subtype() -> None:
    line = {"type": "result", "subtype": "error_max_turns", "is_error": True}
    [end] = TurnParser().feed(line)
    assert end == TurnEnd(TurnStatus.ERROR, "", "error_max_turns")


def test_lines_that_are_not_output_produce_no_events() -> None:
    parser = TurnParser()
    lines: list[dict[str, Any]] = [
        {"type": "system", "subtype": "init", "session_id": "s"},
        {"type": "system", "subtype": "status", "status": "requesting"},
        {"type": "control_response", "response": {"subtype": "success"}},
        {"type": "user", "message": {"role": "user", "content": "x"}},
        {"type": "stream_event", "event": {"type": "content_block_start", "index": 0}},
        {"type": "stream_event", "event": {"type": "message_stop"}},
        {"type": "something_new", "payload": 1},
        {},
    ]
    assert _feed_all(parser, lines) == []


# --------------------------------------------------------------------------- tools


def test_tool_use_blocks_become_one_line_tool_events() -> None:
    line = {
        "type": "assistant",
        "message": {
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "Bash",
                    "input": {"command": "ls -la\ngrep -r foo .", "description": "List files"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "Read",
                    "input": {"file_path": "/r/a.py"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_3",
                    "name": "Edit",
                    "input": {"file_path": "/r/b.py", "old_string": "a\nb"},
                },
            ]
        },
    }

    events = TurnParser().feed(line)

    assert events == [
        ToolUse("Bash", "ls -la"),
        ToolUse("Read", "/r/a.py"),
        ToolUse("Edit", "/r/b.py"),
    ]
    assert all("\n" not in e.detail for e in events if isinstance(e, ToolUse))


def test_tool_detail_of_an_unknown_input_is_one_line_json() -> None:
    line = {
        "type": "assistant",
        "message": {
            "content": [
                {"type": "tool_use", "name": "Custom", "input": {"query": "a\nb", "n": 2}},
            ]
        },
    }
    [event] = TurnParser().feed(line)
    assert isinstance(event, ToolUse)
    assert event.name == "Custom"
    assert "\n" not in event.detail
    assert json.loads(event.detail) == {"query": "a\nb", "n": 2}


def test_assistant_text_alone_produces_no_events() -> None:
    # The full message repeats what the deltas already streamed.
    line = {"type": "assistant", "message": {"content": [{"type": "text", "text": "hi"}]}}
    assert TurnParser().feed(line) == []


# --------------------------------------------------------------------------- separators


def test_second_message_gets_a_paragraph_break() -> None:
    tool = {
        "type": "assistant",
        "message": {"content": [{"type": "tool_use", "name": "Bash", "input": {"command": "ls"}}]},
    }
    lines = [
        _message_start(),
        _delta("Looking"),
        _delta(" now."),
        tool,
        _message_start(),
        _delta("Found"),
        _delta(" it."),
    ]

    events = _feed_all(TurnParser(), lines)

    assert events == [
        TextDelta("Looking"),
        TextDelta(" now."),
        ToolUse("Bash", "ls"),
        TextDelta("\n\nFound"),
        TextDelta(" it."),
    ]


def test_no_break_before_the_first_text() -> None:
    # A first message with only a tool call, then text: nothing to separate from.
    lines = [_message_start(), _message_start(), _delta("Hello")]
    assert _feed_all(TurnParser(), lines) == [TextDelta("Hello")]


def test_one_break_however_many_messages_had_no_text() -> None:
    lines = [_message_start(), _delta("a"), _message_start(), _message_start(), _delta("b")]
    assert _feed_all(TurnParser(), lines) == [TextDelta("a"), TextDelta("\n\nb")]


def test_empty_deltas_produce_nothing_and_keep_the_break_pending() -> None:
    lines = [_message_start(), _delta("a"), _message_start(), _delta(""), _delta("b")]
    assert _feed_all(TurnParser(), lines) == [TextDelta("a"), TextDelta("\n\nb")]


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize("name", [*PARTIAL_TRANSCRIPTS, "b_stream_json.jsonl.txt"])
def test_a_turn_end_carries_the_result_lines_usage_and_this_turns_cost(name: str) -> None:
    before = 0.0
    for turn in _replay(name):
        counts = turn.result["usage"]
        total = turn.result["total_cost_usd"]
        assert turn.end.usage is not None
        assert (turn.end.usage.input_tokens, turn.end.usage.output_tokens) == (
            counts["input_tokens"],
            counts["output_tokens"],
        )
        assert turn.end.usage.cost_usd == pytest.approx(total - before)
        before = total


def test_the_result_lines_cost_is_a_running_total_and_a_turn_costs_its_difference() -> None:
    first, second, _ = _replay("b_stream_json_partial_2.1.331.jsonl.txt")
    assert first.end.usage == Usage(12303, 5, 0.049312)
    assert second.end.usage == Usage(12334, 4, pytest.approx(0.098728 - 0.049312))


def test_an_interrupted_turn_reports_its_usage_too() -> None:
    interrupted, _ = _replay("b_stream_json_interrupt.jsonl.txt")
    assert interrupted.end.usage == Usage(0, 0, 0.0)


def test_usage_is_none_without_counts_or_cost_and_partial_with_either() -> None:
    line: dict[str, Any] = {"type": "result", "subtype": "success", "result": "x"}
    [bare] = TurnParser().feed(line)
    [cost_only] = TurnParser().feed({**line, "total_cost_usd": 0.5})
    [counts_only] = TurnParser().feed({**line, "usage": {"output_tokens": 3}})
    assert isinstance(bare, TurnEnd)
    assert bare.usage is None
    assert cost_only == TurnEnd(TurnStatus.SUCCESS, "x", usage=Usage(0, 0, 0.5))
    assert counts_only == TurnEnd(TurnStatus.SUCCESS, "x", usage=Usage(0, 3, None))


# --------------------------------------------------------------------------- odd input


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"type": "stream_event", "event": "text"}, []),
        ({"type": "stream_event", "event": {"type": "content_block_delta", "delta": [1]}}, []),
        ({"type": "assistant", "message": "hello"}, []),
        ({"type": "assistant", "message": {"content": "hello"}}, []),
        ({"type": "assistant", "message": {"content": [1, None, "x"]}}, []),
        ({"type": "control_request", "request": "can_use_tool"}, []),
        (
            {"type": "control_request", "request": {"subtype": "can_use_tool", "input": [1]}},
            [ToolRequest("", "?", {}, "")],
        ),
        (
            {"type": "result", "usage": "many", "total_cost_usd": "1", "errors": "x"},
            [TurnEnd(TurnStatus.ERROR, "", "error")],
        ),
        ({"type": 7}, []),
    ],
)
def test_odd_lines_are_read_as_far_as_they_go(line: dict[str, Any], expected: list[Event]) -> None:
    assert TurnParser().feed(line) == expected


def test_only_json_objects_are_stream_lines() -> None:
    assert parse_line("Warning: something the CLI printed") is None
    assert parse_line('["a", "list"]') is None
    assert parse_line('{"type": "system", "session_id": "s"}') == {
        "type": "system",
        "session_id": "s",
    }


# --------------------------------------------------------------------------- questions and plans
# Recorded from 2.1.331 against the fake API's TOOL_ASK / TOOL_PLAN (`--permission-prompt-tool
# stdio`; the plan ones with `--permission-mode plan`), answered as the file names say. What
# the API then received as the tool's result:
# - AskUserQuestion allowed with ``updatedInput = {**input, "answers": {question: label}}``:
#   'Your questions have been answered: "Which database?"="SQLite". You can now continue
#   with these answers in mind.'
# - ExitPlanMode allowed: "User has approved exiting plan mode. You can now proceed."
# - either denied with ``message``: that message, as an error result (a plan's feedback).


def test_a_question_arrives_as_a_question_request_carrying_its_options() -> None:
    [turn] = _replay("b_stream_json_ask_answers_2.1.331.jsonl.txt")
    [request] = [e for e in turn.events if isinstance(e, QuestionRequest)]
    [question] = request.questions
    assert question.question == "Which database?"
    assert question.header == "Choice"
    assert [o.label for o in question.options] == ["SQLite", "Postgres"]
    assert [o.description for o in question.options] == ["one file, no server", "a server"]
    assert question.multi_select is False
    assert request.input["questions"], "the input as asked, for the answer to build on"
    assert not [e for e in turn.events if isinstance(e, ToolRequest | ToolUse)]
    assert turn.end.status is TurnStatus.SUCCESS


def test_a_plan_request_carries_the_plan_from_its_tool_call() -> None:
    """2.1.331 asks to exit plan mode with an empty input: the plan (Markdown) is only in
    the assistant message's tool_use block, which the parser joins to the request."""
    for name in (
        "b_stream_json_plan_approved_2.1.331.jsonl.txt",
        "b_stream_json_plan_rejected_2.1.331.jsonl.txt",
    ):
        [turn] = _replay(name)
        [request] = [e for e in turn.events if isinstance(e, PlanRequest)]
        assert request.input == {}, "echoed back as it came"
        assert request.plan == "# Plan\n\n1. add a users table\n2. Run the tests"
        assert not [e for e in turn.events if isinstance(e, ToolRequest | ToolUse)]


@pytest.mark.parametrize(
    "questions",
    [None, [], ["not an object"], [{"options": []}], [{"question": "Q?", "options": "x"}]],
)
def test_a_question_of_an_unknown_shape_is_left_to_the_approvers(questions: object) -> None:
    """Fail closed: a question the parser cannot read is an ordinary tool call."""
    line = {
        "type": "control_request",
        "request_id": "r1",
        "request": {
            "subtype": "can_use_tool",
            "tool_name": "AskUserQuestion",
            "input": {"questions": questions},
            "tool_use_id": "t1",
        },
    }
    [event] = TurnParser().feed(line)
    assert isinstance(event, ToolRequest)
    assert event.tool == "AskUserQuestion"
