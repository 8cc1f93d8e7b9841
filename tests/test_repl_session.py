"""agents.repl: a terminal program on a pty as the agent, against Python's own REPL and a
scripted one (tests/fakes/scripted_repl.py); and the repl driver through the app."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.memory import MemoryAdapter
from agents.repl import ReplSession, strip_echo
from bot.agent import SessionDied, SessionError, TextDelta, ToolRequest, TurnEnd
from bot.app import App
from bot.config import ConfigError, Settings
from bot.confinement import Confinement, sandbox_support
from bot.model import OutputText, TurnStatus
from tests.conftest import NO_CONFINEMENT, make_settings
from tests.rigs import Events, serving

SCRIPTED = Path(__file__).resolve().parent / "fakes" / "scripted_repl.py"
PYTHON = [sys.executable, "-i", "-q"]
WITHIN_S = 20.0

pytestmark = pytest.mark.timeout(60)


def _settings(tmp_path: Path, command: list[str], **agent: object) -> Settings:
    return make_settings(
        tmp_path,
        None,
        agent={"kind": "repl", "command": command, "prompt_marker": "^>>> ?$", **agent},
    )


def _env(tmp_path: Path) -> dict[str, str]:
    # HOME: Python's REPL keeps its history there.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}


async def _session(
    tmp_path: Path,
    command: list[str],
    confinement: Confinement = NO_CONFINEMENT,
    **agent: object,
) -> ReplSession:
    settings = _settings(tmp_path, command, **agent)
    session = ReplSession(
        settings.agent, settings.claude, env=_env(tmp_path), confinement=confinement
    )
    await session.start()
    await asyncio.wait_for(session.ready.wait(), WITHIN_S)
    return session


@pytest.fixture
async def python_repl(tmp_path: Path) -> AsyncIterator[ReplSession]:
    session = await _session(tmp_path, PYTHON)
    try:
        yield session
    finally:
        await session.stop()


async def _turn(session: ReplSession, prompt: str) -> tuple[str, TurnEnd]:
    """The turn's streamed text and its end."""
    text = ""
    events: list[object] = []
    async with asyncio.timeout(WITHIN_S):
        async for event in session.run(prompt):
            events.append(event)
            if isinstance(event, TextDelta):
                text += event.text
    end = events[-1]
    assert isinstance(end, TurnEnd), f"the turn ended without a TurnEnd: {events!r}"
    return text, end


async def _consume(session: ReplSession, prompt: str, events: asyncio.Queue[object]) -> None:
    """Put each of the turn's events on ``events``, or what it raised."""
    try:
        async for event in session.run(prompt):
            events.put_nowait(event)
    except SessionError as exc:
        events.put_nowait(exc)


async def _until_text(events: asyncio.Queue[object], needle: str) -> None:
    async with asyncio.timeout(WITHIN_S):
        while True:
            event = await events.get()
            if isinstance(event, TextDelta) and needle in event.text:
                return
            assert not isinstance(event, TurnEnd | Exception), f"turn ended early: {event!r}"


# -- the echo -----------------------------------------------------------------------------


def test_strip_echo_drops_the_prompt_line_and_continuations() -> None:
    assert strip_echo(">>> print(6*7)\n42\n>>>", "print(6*7)") == "42\n>>>"
    echo = ">>> print(len('''ab\n... cd'''))\n4"
    assert strip_echo(echo, "print(len('''ab\ncd'''))") == "4"


def test_strip_echo_waits_for_the_whole_echo_then_gives_up_on_none() -> None:
    assert strip_echo(">>> print(6", "print(6*7)") is None
    no_echo = "output " * 100
    assert strip_echo(no_echo, "quiet") == no_echo


# -- Python's REPL ------------------------------------------------------------------------


async def test_a_turn_streams_the_answer_and_ends_at_the_marker(
    python_repl: ReplSession,
) -> None:
    text, end = await _turn(python_repl, "print(6*7)")
    assert end.status is TurnStatus.SUCCESS
    assert "42" in text
    assert end.result == "42"  # neither the echo nor the closing marker
    text, end = await _turn(python_repl, "print('again')")
    assert end.result == "again"


@pytest.mark.skipif(not sandbox_support().is_available, reason="needs bubblewrap (.ci/run has it)")
async def test_under_the_sandbox_the_program_sees_none_of_the_bots_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "tokens.json").write_text("host-invite-secret")
    confinement = Confinement(denied=(state,), is_sandboxed=True)
    session = await _session(tmp_path, PYTHON, confinement)
    try:
        _, end = await _turn(session, f"import os; print(os.listdir({str(state)!r}))")
        assert end.result == "[]"
        _, end = await _turn(session, "print(os.getpid() == 1 or os.getppid())")
        assert end.result != str(os.getpid()), "the bot's process is not the program's parent"
    finally:
        await session.stop()


async def test_a_long_multiline_prompt_arrives_whole(python_repl: ReplSession) -> None:
    prompt = "print(len('''" + "x" * 5000 + "\n" + "y" * 5000 + "'''))"
    _, end = await _turn(python_repl, prompt)
    assert end.status is TurnStatus.SUCCESS
    assert end.result.splitlines()[-1] == "10001"


async def test_interrupt_ends_the_turn_promptly(python_repl: ReplSession) -> None:
    events: asyncio.Queue[object] = asyncio.Queue()
    turn = asyncio.create_task(
        _consume(python_repl, "import time; print('sleeping'); time.sleep(30)", events)
    )
    await _until_text(events, "sleeping")
    assert await python_repl.interrupt()
    async with asyncio.timeout(5):  # far less than the 30 s sleep
        await turn
    *_, end = [events.get_nowait() for _ in range(events.qsize())]
    assert isinstance(end, TurnEnd)
    assert end.status is TurnStatus.INTERRUPTED
    assert "KeyboardInterrupt" in end.result
    assert not await python_repl.interrupt(), "no turn runs any more"


async def test_a_program_killed_mid_turn_raises_and_is_restarted(
    python_repl: ReplSession,
) -> None:
    events: asyncio.Queue[object] = asyncio.Queue()
    turn = asyncio.create_task(
        _consume(python_repl, "import time; print('sleeping'); time.sleep(30)", events)
    )
    await _until_text(events, "sleeping")
    first_pid = python_repl.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    async with asyncio.timeout(WITHIN_S):
        await turn
        while not isinstance(died := await events.get(), Exception):
            pass
    assert isinstance(died, SessionDied)
    await asyncio.wait_for(python_repl.ready.wait(), WITHIN_S)
    assert python_repl.restarts == 1
    assert python_repl.pid != first_pid
    _, end = await _turn(python_repl, "print(6*7)")
    assert end.result == "42"


async def test_approvals_are_refused_saying_why(python_repl: ReplSession) -> None:
    request = ToolRequest("r1", "Bash", {"command": "ls"}, "t1")
    with pytest.raises(SessionError, match="approvals are not available"):
        await python_repl.answer_tool(request, allow=True)


# -- a scripted REPL: the marker mid-output, a redrawn line, slow chunks --------------------


async def test_a_marker_mid_output_does_not_end_the_turn(tmp_path: Path) -> None:
    # Pauses of 0.2 s while the marker shows (under idle_s), one of 0.6 s without it.
    session = await _session(tmp_path, [sys.executable, str(SCRIPTED), "0.2"], idle_s=0.5)
    try:
        text, end = await _turn(session, "go")
    finally:
        await session.stop()
    assert end.status is TurnStatus.SUCCESS
    lines = end.result.splitlines()
    assert lines[0] == "step 1"
    assert "working 3/3" in lines  # the redrawn line, as it was left
    assert "working 1/3" not in end.result
    assert lines[-2:] == ["thinking hard", "done"]
    assert text.rstrip().endswith("done")


async def test_a_program_that_enabled_bracketed_paste_gets_one_paste(tmp_path: Path) -> None:
    session = await _session(tmp_path, [sys.executable, str(SCRIPTED), "0.1", "paste"])
    try:
        _, end = await _turn(session, "hello there")
    finally:
        await session.stop()
    assert end.result.splitlines()[-1] == "pasted: hello there"


async def test_a_marker_that_never_shows_ends_serve_naming_the_setting(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        None,
        claude={"turn_timeout_s": 1.0},
        agent={"kind": "repl", "command": PYTHON, "prompt_marker": "^never$", "idle_s": 0.1},
    )
    session = ReplSession(
        settings.agent, settings.claude, env=_env(tmp_path), confinement=NO_CONFINEMENT
    )
    async with session:
        with pytest.raises(SessionError, match=r"agent\.prompt_marker"):
            await asyncio.wait_for(session.serve(), WITHIN_S)
    assert not session.ready.is_set()


# -- settings -------------------------------------------------------------------------------


def test_a_repl_without_a_command_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"agent\.command is required"):
        make_settings(tmp_path, None, agent={"kind": "repl"})


def test_a_prompt_marker_must_compile(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"agent\.prompt_marker"):
        make_settings(tmp_path, None, agent={"prompt_marker": "(unclosed"})


# -- through the app ----------------------------------------------------------------------------


async def test_a_party_on_the_repl_driver_streams_the_answer(tmp_path: Path) -> None:
    settings = _settings(tmp_path, PYTHON)
    app = App(settings, agent_env=_env(tmp_path), confinement=NO_CONFINEMENT)
    async with app:
        party = app.parties[settings.party.name]
        events = Events()
        party.subscribe(events)
        chat = MemoryAdapter(party)
        app.add(chat)
        async with serving(app):
            assert await chat.join("alice", app.invites[party.name].prompter)
            await chat.push_prompt("alice", "print(6*7)")
            done = await events.done(within_s=WITHIN_S)
            assert done.status is TurnStatus.SUCCESS
            streamed = "".join(e.text for e in events.seen if isinstance(e, OutputText))
            assert "42" in streamed
            status = await chat.command("alice", "status")
            assert "the repl agent" in status.text
            assert "approvals: not available on this driver" in status.text
