"""The fake OpenAI Responses API speaks what codex 0.171 sends and reads: checked against a
request body the real CLI sent (tests/payloads/codex/), and over HTTP without the CLI."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.openai_api import FakeOpenAI, codex_env, user_text

pytestmark = pytest.mark.timeout(30)

PAYLOAD = Path(__file__).parent / "payloads" / "codex" / "responses_request_0.171.0.json"


@pytest.fixture
async def api() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(slow_interval_s=0.05, slow_steps=3) as fake:
        yield fake


def _body(*items: dict[str, Any]) -> dict[str, Any]:
    return {"model": "gpt-fake", "stream": True, "input": list(items)}


def _user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def _post(api: FakeOpenAI, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """The status and, for a stream, its events in order (else the error body, alone)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api.base_url}/responses", json=body) as response,
    ):
        if response.content_type != "text/event-stream":
            return response.status, [await response.json()]
        events = []
        async for line in response.content:
            if line.startswith(b"data: "):
                events.append(json.loads(line[len(b"data: ") :]))
        return response.status, events


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


# -- what codex really sends ---------------------------------------------------------------------


def test_the_user_text_of_a_real_request_is_the_prompt() -> None:
    body = json.loads(PAYLOAD.read_text())
    assert body["stream"] is True
    assert user_text(body["input"]) == "Hello from Concordia"


def test_the_shell_call_is_shaped_as_codex_defines_its_tool() -> None:
    body = json.loads(PAYLOAD.read_text())
    (tool,) = [t for t in body["tools"] if t.get("name") == "exec_command"]
    assert tool["type"] == "function"
    assert tool["parameters"]["required"] == ["cmd"]


def test_codex_env_names_the_fake_and_takes_nothing_else_from_the_host(tmp_path: Path) -> None:
    os.environ["OPENAI_API_KEY"] = "sk-real-key-of-the-developer"
    env = codex_env(tmp_path / "home", "http://127.0.0.1:9/v1")
    assert set(env) == {"PATH", "HOME", "CODEX_HOME", "TMPDIR", "OPENAI_API_KEY"}
    assert env["OPENAI_API_KEY"] != os.environ["OPENAI_API_KEY"]
    config = tomllib.loads((Path(env["CODEX_HOME"]) / "config.toml").read_text())
    provider = config["model_providers"][config["model_provider"]]
    assert provider["base_url"] == "http://127.0.0.1:9/v1"
    assert provider["wire_api"] == "responses"
    assert provider["request_max_retries"] == provider["stream_max_retries"] == 0
    assert config["check_for_update_on_startup"] is False
    assert config["analytics"]["enabled"] is False


# -- over HTTP -----------------------------------------------------------------------------------


async def test_an_echo_streams_in_the_api_event_order(api: FakeOpenAI) -> None:
    status, events = await _post(api, _body(_user("hi")))
    assert status == 200
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert _text(events) == "ECHO: hi"
    usage = events[-1]["response"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == api.usage_sent[0]
    assert api.user_texts() == ["hi"]


async def test_a_shell_call_then_its_result(api: FakeOpenAI) -> None:
    _, events = await _post(api, _body(_user("TOOL_BASH echo hi")))
    call = events[-1]["response"]["output"][0]
    assert call["type"] == "function_call"
    assert call["name"] == "exec_command"
    assert json.loads(call["arguments"]) == {"cmd": "echo hi"}
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "hi\n"}
    _, events = await _post(api, _body(_user("TOOL_BASH echo hi"), call, output))
    assert _text(events) == "TOOL RESULT: hi\n"
    assert api.turns[-1].tool_outputs == ("hi\n",)
    answered = {"type": "message", "role": "assistant", "content": []}
    _, events = await _post(api, _body(_user("x"), call, output, answered, _user("next")))
    assert _text(events) == "ECHO: next", "an answered tool output is not answered again"
    aborted = _user("<turn_aborted>\nThe user interrupted the previous turn on purpose.")
    _, events = await _post(api, _body(_user("x"), call, output, aborted, _user("again")))
    assert _text(events) == "ECHO: again", "an interrupted turn's tool output is left alone"
    note = _user("The approvers declined that request: no")
    _, events = await _post(api, _body(_user("x"), call, output, note))
    assert _text(events) == "TOOL RESULT: hi\n", "a note in the same turn does not end it"


async def test_fail_is_a_500_and_limits_refuse_once(api: FakeOpenAI) -> None:
    status, (error,) = await _post(api, _body(_user("FAIL")))
    assert status == 500
    assert error["error"]["type"] == "server_error"
    status, (error,) = await _post(api, _body(_user("LIMIT_429 a")))
    assert status == 429
    assert error["error"]["code"] == "rate_limit_exceeded"
    status, (error,) = await _post(api, _body(_user("LIMIT_USAGE b")))
    assert status == 429
    assert error["error"]["type"] == "usage_limit_reached"
    status, _ = await _post(api, _body(_user("LIMIT_429 a")))
    assert status == 200
    assert len(api.turns) == 4, "refused requests are recorded too"


async def test_slow_sets_first_delta_then_trickles(api: FakeOpenAI) -> None:
    _, events = await _post(api, _body(_user("SLOW")))
    assert api.first_delta.is_set()
    assert _text(events) == "ECHO: SLOW . . ."


async def test_what_is_not_the_api_is_refused(api: FakeOpenAI) -> None:
    status, _ = await _post(api, {"input": [], "stream": False})
    assert status == 400
    async with aiohttp.ClientSession() as http, http.get(f"{api.base_url}/models") as response:
        assert response.status == 404
    assert api.turns == []


def test_user_text_leaves_out_what_codex_adds() -> None:
    message = {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_text", "text": '<image name=[Image #1] path="/x.png">'},
            {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
            {"type": "input_text", "text": "</image>"},
        ],
    }
    context = _user("<environment_context>\n  <cwd>/w</cwd>\n</environment_context>")
    assert user_text([_user("older"), context, message]) == "look"
    assert user_text([context]) == ""
