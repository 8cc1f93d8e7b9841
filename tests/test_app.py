"""bot.app, the composition root: every owner runs where its death is seen (issue #13).

A part that dies (a relay whose sink breaks, a Claude supervisor that cannot respawn) must end
the run with a message naming the part, not leave a bot that looks alive but is deaf.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from bot.app import App, PartFailed, chat_outputs
from bot.model import Author, Prompt, TurnStatus
from bot.ports import ChatOutput
from bot.render import Markup
from tests.conftest import NO_CONFINEMENT, make_settings
from tests.e2e.harness import BotProcess, Client
from tests.fakes.agent import FakeAgent
from tests.fakes.anthropic_api import FakeAnthropic, claude_command
from tests.rigs import open_rig, serving

pytestmark = [pytest.mark.timeout(60)]


@dataclass(eq=False)  # a sink is itself, as the real ones are
class BrokenSink:
    """A chat sink whose post fails with a bug (not an `AdapterError` the relay retries)."""

    max_message_chars: int = 2000
    edit_interval_s: float = 0.01
    posted: asyncio.Event = field(default_factory=asyncio.Event)

    async def post(self, thread: str, text: str) -> str:
        self.posted.set()
        raise RuntimeError("the sink is broken")

    async def edit(self, ref: str, text: str) -> None:
        raise RuntimeError("the sink is broken")


class BrokenChat:
    """A chat transport (the seam is ours: `bot.ports.ChatAdapter`) with a broken sink."""

    name = "broken-chat"

    def __init__(self, party: str) -> None:
        self.sink = BrokenSink()
        self._party = party
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()

    def outputs(self) -> list[ChatOutput]:
        return [ChatOutput(self._party, self.sink, "broken-chat", Markup.MARKDOWN, "home")]


def _fake_agents(
    workdir: Path,
) -> tuple[list[tuple[str, str | None]], Callable[[str, str | None], FakeAgent]]:
    """An agent factory for `App` that builds `FakeAgent`s, and the arguments it is given."""
    calls: list[tuple[str, str | None]] = []

    def build(party: str, session_id: str | None) -> FakeAgent:
        calls.append((party, session_id))
        return FakeAgent(workdir=workdir, session_id=session_id)

    return calls, build


async def test_a_relay_that_dies_ends_the_run_naming_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None)
    _, agents = _fake_agents(settings.claude.workdir)
    async with App(settings, agent_env={}, confinement=NO_CONFINEMENT, agent_factory=agents) as app:
        chat = BrokenChat(settings.party.name)
        app.add(chat)
        party = app.parties[settings.party.name]
        ready = asyncio.Event()
        serving = asyncio.create_task(app.serve(asyncio.Event(), ready.set))
        await asyncio.wait_for(ready.wait(), 30)
        alice = Author("test", "alice", "alice")
        assert await party.join(app.invites[settings.party.name].prompter, alice)
        await party.submit(Prompt("p1", alice, "hello", thread="t1"))

        with pytest.raises(PartFailed) as failed:
            await asyncio.wait_for(serving, 30)

    assert failed.value.part == f"the broken-chat relay of party {settings.party.name!r}"
    assert "the sink is broken" in str(failed.value)
    assert chat.sink.posted.is_set()


async def test_chat_outputs_stop_their_relays_and_unsubscribe(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None)
    _, agents = _fake_agents(settings.claude.workdir)
    async with App(settings, agent_env={}, confinement=NO_CONFINEMENT, agent_factory=agents) as app:
        party = app.parties[settings.party.name]
        chat = BrokenChat(party.name)
        async with chat_outputs(chat, app.parties, app.store) as relays:
            ((output, relay),) = relays
            assert output.party == party.name
            assert relay in party._listeners
        assert relay not in party._listeners


async def test_each_party_gets_its_agent_from_the_factory_with_its_stored_session(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, None)
    calls, agents = _fake_agents(settings.claude.workdir)
    name = settings.party.name
    app = App(settings, agent_env={}, confinement=NO_CONFINEMENT, agent_factory=agents)
    async with app, serving(app):
        assert calls == [], "no agent before the party needs one"
        await app.sessions[name].start()
    async with open_rig(settings) as rig:
        assert await rig.chat.join("alice", rig.invites.prompter)
        await rig.chat.push_prompt("alice", "hello")
        done = await rig.events.done()
        assert done.status is TurnStatus.SUCCESS
        first = rig.party.session.session_id
    app = App(settings, agent_env={}, confinement=NO_CONFINEMENT, agent_factory=agents)
    async with app, serving(app):
        await app.sessions[name].start()
    assert first is not None
    assert calls == [(name, None), (name, first)]


@pytest.mark.claude
async def test_a_claude_that_cannot_be_restarted_ends_concordia_run(
    fake_api: FakeAnthropic, tmp_path: Path
) -> None:
    """`claude.command` is a script that goes away once Claude runs: when Claude then dies,
    the supervisor cannot start it again, and `concordia run` exits saying so."""
    script = tmp_path / "claude-once"
    script.write_text(f'#!/bin/sh\nexec "{claude_command()}" "$@"\n')
    script.chmod(0o755)
    make_settings(tmp_path, fake_api, claude={"command": str(script)})
    async with BotProcess(tmp_path / "config.toml", tmp_path) as bot:
        async with Client(bot.port, bot.host_token, "host") as host:
            await host.expect("welcome")
            await host.prompt("p1", "hello")  # Claude starts when first needed
            await host.expect("done")
        assert bot.proc is not None
        (claude,) = psutil.Process(bot.proc.pid).children()
        script.unlink()
        os.killpg(claude.pid, signal.SIGKILL)
        code = await asyncio.wait_for(bot.wait_exit(), 30)

    stderr = "".join(bot.log)
    assert code == 1, stderr
    assert "concordia: Claude of party 'default' stopped: claude.command" in stderr, stderr[-600:]
    assert "was not found" in stderr
