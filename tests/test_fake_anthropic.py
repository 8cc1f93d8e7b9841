"""The fake Anthropic API is good enough for the real `claude` CLI: echo, interrupt, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.anthropic_api import (
    LONG_REPLY,
    FakeAnthropic,
    claude_command,
    claude_env,
)

_STREAM_JSON_ARGS = (
    "-p",
    "--input-format",
    "stream-json",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
)
_DEADLINE_S = 20.0
# stream-json lines (system/init, a LONG result) can exceed asyncio's 64 KiB default.
_LINE_LIMIT_BYTES = 1 << 20


@pytest.fixture
async def api() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


async def _run_print(api: FakeAnthropic, home: Path, *args: str) -> tuple[int, str]:
    """Run ``claude -p …`` to completion; return its exit code and stdout."""
    proc = await asyncio.create_subprocess_exec(
        claude_command(),
        "-p",
        *args,
        env=claude_env(home, api.base_url),
        cwd=home,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(_DEADLINE_S):
            stdout, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode()


def _user_line(text: str) -> bytes:
    line = {"type": "user", "message": {"role": "user", "content": text}}
    return (json.dumps(line) + "\n").encode()


async def _read_until(
    proc: asyncio.subprocess.Process, is_last: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Events from stdout up to and including the first one ``is_last`` accepts."""
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(_DEADLINE_S):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"claude closed stdout early; events so far: {events}")
            event = json.loads(line)
            events.append(event)
            if is_last(event):
                return events


def _is_result(event: dict[str, Any]) -> bool:
    return event.get("type") == "result"


def _is_text_delta(event: dict[str, Any]) -> bool:
    return (
        event.get("type") == "stream_event" and event["event"].get("type") == "content_block_delta"
    )


@pytest.mark.claude
@pytest.mark.timeout(30)
async def test_print_mode_echoes_the_prompt(api: FakeAnthropic, tmp_path: Path) -> None:
    returncode, stdout = await _run_print(api, tmp_path, "hello")

    assert returncode == 0
    assert stdout.strip() == "ECHO: hello"
    recorded = await asyncio.wait_for(api.requests.get(), 5)
    assert recorded.user_text == "hello"
    assert [turn.user_text for turn in api.turns] == ["hello"]


@pytest.mark.claude
@pytest.mark.timeout(60)
async def test_stream_json_interrupt_stops_slow_reply_and_next_turn_works(
    api: FakeAnthropic, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        claude_command(),
        *_STREAM_JSON_ARGS,
        env=claude_env(tmp_path, api.base_url),
        cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        limit=_LINE_LIMIT_BYTES,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(_user_line("SLOW please"))
        await proc.stdin.drain()
        await asyncio.wait_for(api.first_delta.wait(), _DEADLINE_S)
        # Interrupt only once the CLI has the partial text too; interrupted earlier, it
        # drops the whole turn from the history it sends next.
        await _read_until(proc, _is_text_delta)

        interrupt = {
            "type": "control_request",
            "request_id": "i1",
            "request": {"subtype": "interrupt"},
        }
        proc.stdin.write((json.dumps(interrupt) + "\n").encode())
        await proc.stdin.drain()
        interrupted = await _read_until(proc, _is_result)

        proc.stdin.write(_user_line("after"))
        await proc.stdin.drain()
        second = await _read_until(proc, _is_result)

        proc.stdin.close()
        async with asyncio.timeout(_DEADLINE_S):
            returncode = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    acks = [
        e
        for e in interrupted
        if e["type"] == "control_response" and e["response"].get("request_id") == "i1"
    ]
    assert [ack["response"]["subtype"] for ack in acks] == ["success"]
    partial = [e for e in interrupted if e["type"] == "assistant"]
    assert len(partial) == 1
    assert partial[0]["message"]["content"][0]["text"].startswith("ECHO: SLOW please")
    assert interrupted[-1]["subtype"] == "error_during_execution"
    assert interrupted[-1]["is_error"] is True
    assert second[-1]["subtype"] == "success"
    assert second[-1]["result"] == "ECHO: after"
    assert returncode == 0
    assert [turn.user_text for turn in api.turns] == ["SLOW please", "after"]
    # The resumed turn carries the interrupted one as history.
    assert api.turns[1].message_count > api.turns[0].message_count
    # The aborted SLOW stream ended before the next request arrived, and none leaked.
    assert api.max_in_flight == 1
    assert api.in_flight == 0


@pytest.mark.claude
@pytest.mark.timeout(30)
async def test_fail_makes_print_mode_exit_with_api_error(
    api: FakeAnthropic, tmp_path: Path
) -> None:
    returncode, stdout = await _run_print(api, tmp_path, "please FAIL")

    assert returncode != 0
    assert "API Error: 500" in stdout
    assert "fake internal error" in stdout
    # CLAUDE_CODE_MAX_RETRIES=0 from claude_env: exactly one attempt.
    assert [turn.user_text for turn in api.turns] == ["please FAIL"]


@pytest.mark.claude
@pytest.mark.timeout(30)
async def test_long_reply_arrives_whole_in_json_output(api: FakeAnthropic, tmp_path: Path) -> None:
    returncode, stdout = await _run_print(api, tmp_path, "LONG please", "--output-format", "json")

    assert returncode == 0
    result = json.loads(stdout)
    assert result["subtype"] == "success"
    assert len(result["result"]) > 10_000
    assert result["result"].count("```python") >= 3
    assert result["result"] == LONG_REPLY


@pytest.mark.claude
@pytest.mark.timeout(30)
async def test_fail_next_fails_only_the_next_request(api: FakeAnthropic, tmp_path: Path) -> None:
    api.fail_next(1, status=529, message="fake overload")

    failed_rc, failed_stdout = await _run_print(api, tmp_path, "first")
    ok_rc, ok_stdout = await _run_print(api, tmp_path, "second")

    assert failed_rc != 0
    assert "fake overload" in failed_stdout
    assert ok_rc == 0
    assert ok_stdout.strip() == "ECHO: second"
    assert [turn.user_text for turn in api.turns] == ["first", "second"]


@pytest.mark.timeout(10)
async def test_side_requests_and_unknown_paths_are_not_recorded(api: FakeAnthropic) -> None:
    title_request = {
        "model": "claude-fake",
        "stream": True,
        "tools": [],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "<session>LONG"}]}],
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    }
    async with aiohttp.ClientSession(base_url=api.base_url) as http:
        async with http.post("/v1/messages?beta=true", json=title_request) as response:
            title_status = response.status
            title_type = response.content_type
            title_sse = await response.text()
        async with http.head("/") as response:
            head_status = response.status
        async with http.get("/") as response:
            get_status = response.status
        async with http.post("/v1/messages/count_tokens", json={}) as response:
            missing_status = response.status
            missing_body = await response.json()

    assert (title_status, title_type) == (200, "text/event-stream")
    deltas = [
        json.loads(line.removeprefix("data: "))["delta"]["text"]
        for line in title_sse.splitlines()
        if line.startswith("data: ") and '"text_delta"' in line
    ]
    assert "".join(deltas) == '{"title":"Fake"}'
    assert title_sse.rstrip().endswith('data: {"type":"message_stop"}')
    assert (head_status, get_status) == (200, 200)
    assert missing_status == 404
    assert missing_body["error"]["type"] == "not_found_error"
    assert api.turns == []
    assert api.requests.empty()
    assert api.max_in_flight == 0
