"""tests.fakes.agent.FakeAgent: the in-process agent keeps the `bot.agent.AgentSession`
contract the party relies on, with the fake Anthropic API's script."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.agent import AgentEvent, SessionError, TextDelta, ToolRequest, ToolUse, TurnEnd
from bot.model import TurnStatus
from tests.fakes.agent import FakeAgent

pytestmark = [pytest.mark.timeout(30)]


async def _turn(agent: FakeAgent, prompt: str) -> list[AgentEvent]:
    return [event async for event in agent.run(prompt)]


def _text(events: list[AgentEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_the_echo_comes_in_deltas_and_the_turn_ends_last(tmp_path: Path) -> None:
    async with FakeAgent(workdir=tmp_path) as agent:
        events = await _turn(agent, "hello " * 50)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    end = events[-1]
    assert len(deltas) == 3
    assert _text(events) == "ECHO: " + ("hello " * 50)[:200]
    assert isinstance(end, TurnEnd)
    assert end.status is TurnStatus.SUCCESS
    assert end.result == _text(events)
    assert end.usage is not None
    assert [t.user_text for t in agent.turns] == ["hello " * 50]


async def test_fail_ends_the_turn_with_an_error(tmp_path: Path) -> None:
    async with FakeAgent(workdir=tmp_path) as agent:
        (end,) = await _turn(agent, "please FAIL")
    assert isinstance(end, TurnEnd)
    assert end.status is TurnStatus.ERROR
    assert "500" in end.error


async def test_slow_streams_until_interrupted(tmp_path: Path) -> None:
    async with FakeAgent(workdir=tmp_path, slow_interval_s=0.01, slow_steps=10_000) as agent:
        events: list[AgentEvent] = []
        assert not await agent.interrupt(), "no turn runs yet"
        async for event in agent.run("SLOW down"):
            events.append(event)
            if agent.first_delta.is_set() and len(events) == 3:
                assert await agent.interrupt()
    end = events[-1]
    assert isinstance(end, TurnEnd)
    assert end.status is TurnStatus.INTERRUPTED
    assert _text(events) == "ECHO: SLOW down . ."


async def test_tool_bash_asks_and_runs_only_when_allowed(tmp_path: Path) -> None:
    async with FakeAgent(workdir=tmp_path) as agent:
        turn = agent.run("TOOL_BASH touch made.txt")
        assert await anext(turn) == ToolUse("Bash", "touch made.txt")
        request = await anext(turn)
        assert isinstance(request, ToolRequest)
        assert request.input == {"command": "touch made.txt"}
        assert not (tmp_path / "made.txt").exists()
        await agent.answer_tool(request, allow=True)
        rest = [e async for e in turn]
        assert (tmp_path / "made.txt").exists()
        assert _text(rest).startswith("TOOL RESULT: ")

        denied = agent.run("TOOL_BASH touch never.txt")
        await anext(denied)
        second = await anext(denied)
        assert isinstance(second, ToolRequest)
        await agent.answer_tool(second, allow=False, message="no thanks")
        rest = [e async for e in denied]
        assert _text(rest) == "TOOL ERROR: no thanks"
        assert not (tmp_path / "never.txt").exists()
        with pytest.raises(RuntimeError, match="is waiting"):
            await agent.answer_tool(second, allow=True)


async def test_sessions_resume_unless_restarted_fresh(tmp_path: Path) -> None:
    async with FakeAgent(workdir=tmp_path, session_id="stored") as agent:
        await _turn(agent, "one")
        await agent.restart(fresh=False)
        await _turn(agent, "two")
        await agent.restart(fresh=True)
        await _turn(agent, "three")
    ids = [t.session_id for t in agent.turns]
    assert ids[:2] == ["stored", "stored"]
    assert ids[2] not in ("stored", "")
    assert agent.session_id == ids[2]


async def test_a_stopped_agent_takes_no_turn_and_serve_returns(tmp_path: Path) -> None:
    agent = FakeAgent(workdir=tmp_path)
    with pytest.raises(SessionError):
        await _turn(agent, "too early")
    async with agent:
        serving = asyncio.create_task(agent.serve())
        assert agent.ready.is_set()
    await asyncio.wait_for(serving, 5)
    assert not agent.ready.is_set()
