"""`concordia run` when Claude's usage limit is reached (issue #15), seen from WebSocket
clients: the queue is held until the reset time the API gave, prompts sent meanwhile are
kept, and everything is answered once when it resumes. The real CLI and the fake API,
whose ``LIMIT_USAGE`` refuses a text's first request with the usage-limit message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes.anthropic_api import FakeAnthropic

pytestmark = [pytest.mark.claude, pytest.mark.timeout(120)]


@pytest.fixture
async def limited_api() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(usage_reset_s=2.0) as api:
        yield api


def _dones(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "done"]


async def test_a_usage_limit_holds_the_queue_until_its_reset_and_loses_nothing(
    limited_api: FakeAnthropic, tmp_path: Path
) -> None:
    make_settings(tmp_path, limited_api)
    async with (
        BotProcess(tmp_path / "config.toml", tmp_path) as bot,
        Client(bot.port, bot.invite, "alice") as alice,
        Client(bot.port, bot.invite, "bob") as bob,
    ):
        await alice.expect("welcome")
        await bob.expect("welcome")
        await alice.prompt("a1", "LIMIT_USAGE fix the login page")
        held = await bob.expect("system")
        while "usage limit is reached" not in held["message"]:
            held = await bob.expect("system")
        assert "the queue is held until" in held["message"]
        assert "(as the API said)" in held["message"]

        await bob.prompt("b1", "and update the docs")
        queued = await bob.expect("queued", id="b1")
        assert queued["prompt_id"]
        await bob.send({"type": "command", "id": "s1", "name": "status", "args": ""})
        status = await bob.expect("command_result", name="status")
        assert "holding the queue until" in status["text"]

        def both_done(frames: list[dict[str, Any]]) -> bool:
            return len(_dones(frames)) >= 2

        await alice.until(both_done, within_s=60)
        assert [d["status"] for d in _dones(alice.all)] == ["success", "success"]
        batches = [f for f in alice.all if f["type"] == "batch"]
        assert batches[0]["batch_id"] == batches[1]["batch_id"], "the held batch re-ran"
        asked = [t.user_text for t in limited_api.turns]
        assert asked[0] == "LIMIT_USAGE fix the login page"
        assert "re-sent" in asked[1]
        assert asked[1].endswith("LIMIT_USAGE fix the login page")
        assert sum("and update the docs" in a for a in asked) == 1, "answered once"
