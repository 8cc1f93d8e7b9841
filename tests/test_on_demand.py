"""A party's agent runs only while used (issue #15): started by a join or a prompt, stopped
after ``agent.idle_stop_s`` without a turn, resumed in the same conversation."""

from __future__ import annotations

import re
from pathlib import Path

import psutil
import pytest

from bot.model import QuestionAsked, QuestionClosed, Role, TurnStatus
from bot.on_demand import OnDemandAgent
from tests.conftest import make_settings
from tests.fakes.anthropic_api import FakeAnthropic
from tests.rigs import Rig, open_rig
from tests.waits import until

pytestmark = [pytest.mark.timeout(90)]


async def _stopped(agent: OnDemandAgent) -> None:
    await until(lambda: not agent.is_running, agent.changed, what="the idle agent stopping")


async def _prompt(rig: Rig, text: str) -> None:
    after = len(rig.events.seen)
    await rig.chat.push_prompt("alice", text)
    assert (await rig.events.done(after)).status is TurnStatus.SUCCESS


@pytest.mark.claude
async def test_an_idle_agent_stops_and_the_next_prompt_resumes_its_conversation(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, fake_api, agent={"idle_stop_s": 0.5})
    async with open_rig(settings, fake_api) as rig:
        agent = rig.party.session
        assert await rig.chat.join("alice", rig.invites.prompter)
        await _prompt(rig, "remember the word kiwi")
        first_pid = _claude_pids()
        assert first_pid, "the CLI runs while the party uses it"

        await _stopped(agent)
        assert not set(first_pid) & set(_claude_pids()), "no claude process is left idle"
        status = await rig.chat.command("alice", "status")
        assert re.search(
            r"Claude [\d.]+ is not running \(it starts with the next prompt", status.text
        )

        await _prompt(rig, "which word?")
        assert agent.starts == 2
        first, second = fake_api.turns[0], fake_api.turns[-1]
        assert second.session_id == first.session_id, "--resume: the same conversation"
        assert second.message_count > first.message_count, "its history came along"


async def test_a_turn_waiting_for_the_group_keeps_the_agent_up(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None, agent={"idle_stop_s": 0.2})
    async with open_rig(settings) as rig:
        agent = rig.party.session
        assert await rig.chat.join("alice", rig.invites.prompter)
        assert await rig.chat.join("ann", await rig.book.mint_extra(Role.APPROVER))
        await rig.chat.push_prompt("alice", "TOOL_ASK Which database?")
        asked = await rig.events.until(lambda e: isinstance(e, QuestionAsked))
        assert isinstance(asked, QuestionAsked)
        # (The joins may have started and idled it before; from here it must stay up.)
        starts = agent.starts
        # Longer than idle_stop_s passes while the question waits: wait on the reminder-free
        # path by letting the agent's idle timer run out against a busy turn.
        with pytest.raises(AssertionError):
            await until(lambda: not agent.is_running, agent.changed, within_s=0.6)
        assert agent.is_running
        answered = await rig.chat.command("alice", "answer", f"{asked.question_id} 1")
        assert answered.ok, answered.text
        await rig.events.until(lambda e: isinstance(e, QuestionClosed))
        await rig.events.done()
        await _stopped(agent)
        assert agent.starts == starts, "the agent ran from the question to the turn's end"


async def test_ten_parties_start_no_agent_until_one_is_used(tmp_path: Path) -> None:
    """Only the party someone uses gets an agent; the other nine stay at zero."""
    parties = {f"c{i}": f"team{i}" for i in range(10)}
    settings = make_settings(tmp_path, None, slack={"channels": list(parties), "parties": parties})
    async with open_rig(settings) as rig:
        await _prompt_after_join(rig)
        started = {name: s.starts for name, s in rig.app.sessions.items()}
    assert started[settings.party.name] == 1
    assert sum(started.values()) == 1, started


async def _prompt_after_join(rig: Rig) -> None:
    assert await rig.chat.join("alice", rig.invites.prompter)
    await _prompt(rig, "hello")


def _claude_pids() -> list[int]:
    """This test process's running `claude` children (the CLI is a node script)."""
    return [
        child.pid
        for child in psutil.Process().children(recursive=True)
        if child.status() != psutil.STATUS_ZOMBIE and "claude" in " ".join(child.cmdline())
    ]
