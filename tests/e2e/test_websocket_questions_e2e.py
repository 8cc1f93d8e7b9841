"""Claude's questions, plans and images over WebSocket v1, end to end (#15): `concordia run`,
protocol clients, the real `claude` CLI and the fake Anthropic API.

The fake answers ``TOOL_ASK <question>`` with an AskUserQuestion call (SQLite or Postgres)
and ``TOOL_PLAN <step>`` with ExitPlanMode, then echoes the tool result it got back
("TOOL RESULT: …", or "TOOL ERROR: …" when refused), so what reached Claude is both in the
thread's output and in the request bodies the fake recorded.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic
from tests.payloads.images import PNG_1PX, PNG_1PX_B64

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]

WAIT_S = 60.0
NOT_AN_AUTHOR = (
    "only the authors of this batch, approvers and the host answer this question "
    "(questions.answerers)"
)


def _config(tmp_path: Path, api: FakeAnthropic, **overrides: dict[str, object]) -> Path:
    make_settings(tmp_path, api, **overrides)
    return tmp_path / "config.toml"


def tool_results(api: FakeAnthropic) -> list[dict[str, Any]]:
    """Every tool_result block the CLI sent the API, in order (each request carries the
    conversation so far: a result is counted once, by its tool_use_id)."""
    seen: dict[str, dict[str, Any]] = {}
    for turn in api.turns:
        for message in turn.body["messages"]:
            if message["role"] != "user" or not isinstance(message["content"], list):
                continue
            for block in message["content"]:
                if block.get("type") == "tool_result":
                    seen.setdefault(block["tool_use_id"], block)
    return list(seen.values())


def result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, list):
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return str(content)


def output_of(client: Client, batch_id: int) -> str:
    return "".join(
        f["text"] for f in client.all if f["type"] == "output" and f["batch_id"] == batch_id
    )


async def answer(client: Client, question_id: int, text: str) -> dict[str, Any]:
    """Send an answer frame; the command_result that answers it."""
    await client.send({"type": "answer", "question_id": question_id, "text": text})
    return await client.expect("command_result", name="answer")


async def test_a_question_is_answered_over_the_socket_and_the_first_answer_wins(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with (
        BotProcess(_config(tmp_path, fake_api), tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
        Client(bot.port, bot.invite, "bob") as bob,
        Client(bot.port, bot.host_token, "hana") as hana,
    ):
        for client in (alice, bob, hana):
            await client.expect("welcome")
        await alice.prompt("p1", "TOOL_ASK Which database?")
        question = await alice.expect("question", within_s=WAIT_S)
        question_id, batch_id = question["question_id"], question["batch_id"]
        assert question == {
            "type": "question",
            "question_id": question_id,
            "batch_id": batch_id,
            "kind": "choice",
            "header": "Choice",
            "text": "Which database?",
            "options": [
                {"label": "SQLite", "description": "one file, no server"},
                {"label": "Postgres", "description": "a server"},
            ],
            "multi_select": False,
            "answerers": "authors",
            "timeout_s": 60.0,  # questions.timeout_s 0: as long as the turn may run
        }
        for other in (bob, hana):
            assert (await other.expect("question")) == question

        # Bob is a member but no author of this batch: refused, with why; it stays open.
        refused = await answer(bob, question_id, "2")
        assert (refused["ok"], refused["text"]) == (False, NOT_AN_AUTHOR)
        await alice.send({"type": "answer", "question_id": str(question_id), "text": "1"})
        malformed = await alice.expect("error")
        assert malformed["code"] == "malformed"
        assert "question_id" in malformed["message"]

        taken = await answer(alice, question_id, "SQLite")
        assert (taken["ok"], taken["text"]) == (
            True,
            f"question {question_id}: alice answered: SQLite",
        )
        late = await answer(hana, question_id, "2")  # the host, but too late
        assert (late["ok"], late["text"]) == (False, f"question {question_id} is not waiting")
        for client in (alice, bob, hana):
            closed = await client.expect("question_done", question_id=question_id)
            assert closed == {
                "type": "question_done",
                "question_id": question_id,
                "batch_id": batch_id,
                "answered": True,
                "text": "alice answered: SQLite",
            }
        done = await bob.expect("done", batch_id=batch_id, within_s=WAIT_S)
        assert done["status"] == "success"
        assert "TOOL RESULT: " in output_of(bob, batch_id)

    (result,) = tool_results(fake_api)
    assert '"Which database?"="SQLite"' in result_text(result)
    assert not result.get("is_error")


async def test_nobody_answering_in_time_tells_claude_and_the_thread(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    config = _config(tmp_path, fake_api, questions={"timeout_s": 2.0})
    async with (
        BotProcess(config, tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
    ):
        await alice.expect("welcome")
        await alice.prompt("p1", "TOOL_ASK Which database?")
        question = await alice.expect("question", within_s=WAIT_S)
        question_id, batch_id = question["question_id"], question["batch_id"]
        assert question["timeout_s"] == 2.0
        closed = await alice.expect("question_done", question_id=question_id, within_s=30)
        assert (closed["answered"], closed["text"]) == (False, "nobody answered within 2 s")
        late = await answer(alice, question_id, "1")
        assert (late["ok"], late["text"]) == (False, f"question {question_id} is not waiting")
        done = await alice.expect("done", batch_id=batch_id, within_s=WAIT_S)
        assert done["status"] == "success"
        said = output_of(alice, batch_id)
        assert "TOOL ERROR: Nobody in the team answered within 2 s" in said, said

    (result,) = tool_results(fake_api)
    assert result.get("is_error") is True
    assert "Nobody in the team answered within 2 s" in result_text(result)
    assert "best judgement" in result_text(result)


async def test_a_plan_is_approved_then_another_rejected_with_feedback(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    async with (
        BotProcess(_config(tmp_path, fake_api), tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
        Client(bot.port, bot.host_token, "hana") as hana,
    ):
        await alice.expect("welcome")
        await hana.expect("welcome")

        await alice.prompt("p1", "/plan TOOL_PLAN add a users table")
        plan = await hana.expect("question", within_s=WAIT_S)
        plan_id, batch_id = plan["question_id"], plan["batch_id"]
        assert (plan["kind"], plan["answerers"]) == ("plan", "approvers")
        assert [o["label"] for o in plan["options"]] == ["Approve", "Reject"]
        assert "plan is above" in plan["text"]
        # The plan itself is the output just before the question.
        assert "1. add a users table\n2. Run the tests" in output_of(hana, batch_id)
        refused = await answer(alice, plan_id, "1")  # a prompter: plans are for approvers
        assert not refused["ok"]
        assert refused["text"] == "only approvers and the host answer Claude's plans here"
        approved = await answer(hana, plan_id, "Approve")
        assert (approved["ok"], approved["text"]) == (
            True,
            f"question {plan_id}: plan approved by hana",
        )
        closed = await alice.expect("question_done", question_id=plan_id)
        assert (closed["answered"], closed["text"]) == (True, "plan approved by hana")
        done = await alice.expect("done", batch_id=batch_id, within_s=WAIT_S)
        assert done["status"] == "success"
        assert "TOOL RESULT: " in output_of(alice, batch_id)
        (approval,) = tool_results(fake_api)
        assert "User has approved exiting plan mode" in result_text(approval)
        assert not approval.get("is_error")

        await alice.prompt("p2", "/plan TOOL_PLAN drop the legacy table")
        second = await hana.expect("question", within_s=WAIT_S)
        rejected = await answer(hana, second["question_id"], "keep the old schema")
        assert rejected["ok"]
        assert rejected["text"].endswith("plan rejected by hana: keep the old schema")
        closed = await alice.expect("question_done", question_id=second["question_id"])
        assert (closed["answered"], closed["text"]) == (
            True,
            "plan rejected by hana: keep the old schema",
        )
        done = await alice.expect("done", batch_id=second["batch_id"], within_s=WAIT_S)
        assert "TOOL ERROR: " in output_of(alice, second["batch_id"])

    first_turn = fake_api.turns[0].user_text
    assert "TOOL_PLAN add a users table" in first_turn
    assert "/plan" not in first_turn  # the core took the prefix as the mode, not the words
    _, rejection = tool_results(fake_api)
    assert rejection.get("is_error") is True
    assert "keep the old schema" in result_text(rejection)


async def test_an_image_in_the_prompt_frame_reaches_the_api_and_bad_ones_are_refused(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    config = _config(
        tmp_path,
        fake_api,
        party={"collect_window_s": 0.05, "max_image_bytes": 1024},
        websocket={"host": "127.0.0.1", "port": 0, "max_frame_bytes": 65_536},
    )
    dot = {"name": "dot.png", "media_type": "image/png", "data": PNG_1PX_B64}
    big = base64.b64encode(PNG_1PX + b"\0" * 2000).decode()
    async with (
        BotProcess(config, tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
    ):
        welcome = await alice.expect("welcome")
        assert (welcome["max_image_bytes"], welcome["max_frame_bytes"]) == (1024, 65_536)

        async def prompt(client_id: str, *images: dict[str, Any]) -> None:
            frame = {"type": "prompt", "id": client_id, "text": "what is this?"}
            await alice.send(frame | {"images": list(images)})

        await prompt("b64", dot | {"data": "data:image/png;base64," + PNG_1PX_B64})
        error = await alice.expect("error")
        assert (error["code"], error["id"]) == ("malformed", "b64")
        assert "'images[0].data' is not base64" in error["message"]
        await prompt("jpeg", dot | {"media_type": "image/jpeg"})
        reason = (await alice.expect("rejected", id="jpeg"))["reason"]
        assert reason == "dot.png is not a image/jpeg image: its bytes are image/png"
        await prompt("bmp", dot | {"media_type": "image/bmp"})
        reason = (await alice.expect("rejected", id="bmp"))["reason"]
        assert "'image/bmp' is not an image type Claude reads" in reason
        await prompt("big", dot, dot | {"name": "big.png", "data": big})
        reason = (await alice.expect("rejected", id="big"))["reason"]
        assert reason.startswith("big.png (2,068 bytes) is larger than the 1,024 bytes"), reason
        assert "(party.max_image_bytes)" in reason
        assert "65,536 bytes (websocket.max_frame_bytes)" in reason

        await prompt("ok", dot)
        await alice.expect("queued", id="ok")
        done = await alice.expect("done", within_s=WAIT_S)
        assert done["status"] == "success"

    (turn,) = fake_api.turns  # none of the refused prompts reached Claude
    images = [
        block
        for message in turn.body["messages"]
        if message["role"] == "user" and isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "image"
    ]
    assert images == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": dot["data"]},
        }
    ]
    asked = json.dumps(turn.body["messages"][0]["content"])
    assert "what is this?\\n\\n(Attached images, in order: 1. dot.png from alice.)" in asked
