"""agents.codex: the real `codex app-server` (0.171.0) against the fake OpenAI Responses API
(tests/fakes/openai_api.py): turns, the thread across restarts, approvals, interrupt, a
killed process, errors and outages; and a party on the codex driver through the app."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from adapters.memory import MemoryAdapter
from agents.codex import CodexSession
from agents.codex import codex_command as codex_argv
from agents.codex_protocol import Approval, _outage, answer, tool_request
from bot.agent import (
    AgentEvent,
    JsonValue,
    OutageKind,
    QuestionRequest,
    SessionDied,
    SessionError,
    TextDelta,
    ToolRequest,
    ToolUse,
    TurnEnd,
    Usage,
)
from bot.app import App
from bot.config import ClaudeSettings, Settings
from bot.model import Image, OutputText, TurnStatus
from tests.conftest import NO_CONFINEMENT, make_settings
from tests.fakes.openai_api import FakeOpenAI, codex_command, codex_env
from tests.payloads.images import PNG_1PX
from tests.rigs import Events, serving

pytestmark = [pytest.mark.codex, pytest.mark.timeout(120)]

WITHIN_S = 30.0
SLOW_STEPS = 100
SLOW_INTERVAL_S = 0.2  # a SLOW reply takes 20 s: anything much faster was cut short


def _settings(tmp_path: Path, *command: str, **claude: object) -> Settings:
    return make_settings(
        tmp_path,
        None,
        agent={"kind": "codex", "command": [codex_command(), *command]},
        claude={"restart_backoff_s": 0.2, "interrupt_grace_s": 5.0, **claude},
    )


def _env(tmp_path: Path, api: FakeOpenAI) -> dict[str, str]:
    return codex_env(tmp_path / "home", api.base_url)


def _session(
    tmp_path: Path, api: FakeOpenAI, *, session_id: str | None = None, **claude: object
) -> CodexSession:
    settings = _settings(tmp_path, **claude)
    return CodexSession(
        settings.agent,
        settings.claude,
        session_id=session_id,
        env=_env(tmp_path, api),
        confinement=NO_CONFINEMENT,
    )


@pytest.fixture
async def api() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(slow_interval_s=SLOW_INTERVAL_S, slow_steps=SLOW_STEPS) as fake:
        yield fake


@pytest.fixture
async def codex(tmp_path: Path, api: FakeOpenAI) -> AsyncIterator[CodexSession]:
    async with _session(tmp_path, api) as session:
        yield session


async def _turn(
    session: CodexSession, prompt: str, *, allow: bool = True, images: Sequence[Image] = ()
) -> tuple[list[AgentEvent], TurnEnd]:
    """The turn's events and its end; each approval is answered ``allow``."""
    events: list[AgentEvent] = []
    async with asyncio.timeout(WITHIN_S):
        async for event in session.run(prompt, images=images):
            events.append(event)
            if isinstance(event, ToolRequest):
                await session.answer_tool(event, allow=allow, message="denied by alice")
    end = events[-1]
    assert isinstance(end, TurnEnd), f"the turn ended without a TurnEnd: {events!r}"
    return events, end


def _streamed(events: list[AgentEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def _consume(session: CodexSession, prompt: str, events: asyncio.Queue[object]) -> None:
    """Put each of the turn's events on ``events``, or what it raised."""
    try:
        async for event in session.run(prompt):
            events.put_nowait(event)
    except SessionError as exc:
        events.put_nowait(exc)


def _is_gone(path: Path) -> bool:
    return not path.exists()


def _history(api: FakeOpenAI) -> list[str]:
    """The texts of the assistant messages the latest request carried."""
    return [
        part.get("text", "")
        for item in api.turns[-1].body["input"]
        if item.get("role") == "assistant"
        for part in item.get("content", [])
    ]


# -- turns ----------------------------------------------------------------------------------


async def test_a_turn_streams_deltas_and_ends_with_usage(
    codex: CodexSession, api: FakeOpenAI
) -> None:
    assert codex.session_id is None, "a fresh thread has no id to resume before its first turn"
    events, end = await _turn(codex, "hello there")
    assert len([e for e in events if isinstance(e, TextDelta)]) == 3
    assert _streamed(events) == "ECHO: hello there"
    assert end.status is TurnStatus.SUCCESS
    assert end.result == "ECHO: hello there"
    assert end.usage == Usage(*api.usage_sent[0])
    assert api.user_texts() == ["hello there"]
    assert codex.session_id, "the thread has a turn: its id is what resumes it"


async def test_a_second_turn_carries_the_first(codex: CodexSession, api: FakeOpenAI) -> None:
    await _turn(codex, "first")
    _, end = await _turn(codex, "second")
    assert end.result == "ECHO: second"
    assert api.user_texts() == ["first", "second"]
    assert _history(api) == ["ECHO: first"]
    assert api.turns[1].input_count > api.turns[0].input_count


async def test_the_thread_is_resumed_after_a_restart_and_a_new_start(
    tmp_path: Path, api: FakeOpenAI
) -> None:
    async with _session(tmp_path, api) as session:
        await _turn(session, "remember me")
        thread = session.session_id
        assert thread
        await session.restart(fresh=False)
        await asyncio.wait_for(session.ready.wait(), WITHIN_S)
        _, end = await _turn(session, "after the restart")
        assert end.result == "ECHO: after the restart"
        assert session.session_id == thread
        assert session.restarts == 0, "a restart on request is not counted"
    assert _history(api) == ["ECHO: remember me"]

    async with _session(tmp_path, api, session_id=thread) as again:
        assert again.session_id == thread, "a resumed thread has its id from the start"
        await _turn(again, "next start")
        assert again.session_id == thread
    assert _history(api) == ["ECHO: remember me", "ECHO: after the restart"]


async def test_a_fresh_restart_starts_a_new_thread(codex: CodexSession, api: FakeOpenAI) -> None:
    await _turn(codex, "old conversation")
    old = codex.session_id
    await codex.restart(fresh=True)
    await asyncio.wait_for(codex.ready.wait(), WITHIN_S)
    assert codex.session_id is None
    await _turn(codex, "new conversation")
    assert codex.session_id not in (None, old)
    assert _history(api) == []


async def test_a_thread_codex_does_not_have_is_replaced_by_a_new_one(
    tmp_path: Path, api: FakeOpenAI
) -> None:
    lost = "01a244e2-6612-7a03-b19c-000000000000"
    async with _session(tmp_path, api, session_id=lost) as session:
        assert session.session_id is None
        _, end = await _turn(session, "start over")
        assert end.status is TurnStatus.SUCCESS
        assert session.session_id not in (None, lost)


async def test_a_200_kb_prompt_arrives_whole(codex: CodexSession, api: FakeOpenAI) -> None:
    prompt = "BIG " + "x" * 100_000 + "\n" + "y" * 100_000 + " END"
    _, end = await _turn(codex, prompt)
    assert end.status is TurnStatus.SUCCESS
    assert api.user_texts() == [prompt]


async def test_images_reach_the_model_and_their_files_are_removed(
    codex: CodexSession, api: FakeOpenAI
) -> None:
    image = Image("dot.png", "image/png", PNG_1PX)
    _, end = await _turn(codex, "what is this?", images=[image])
    assert end.status is TurnStatus.SUCCESS
    assert api.user_texts() == ["what is this?"]
    (message,) = [i for i in api.turns[0].body["input"] if i.get("role") == "user"][-1:]
    urls = [p["image_url"] for p in message["content"] if p.get("type") == "input_image"]
    assert urls == ["data:image/png;base64," + base64.b64encode(PNG_1PX).decode()]
    tags = [p["text"] for p in message["content"] if p.get("text", "").startswith("<image ")]
    (path,) = re.findall(r'path="([^"]+)"', tags[0])
    assert _is_gone(Path(path)), "the image's private file outlived the turn"
    assert _is_gone(Path(path).parent)


# -- approvals -----------------------------------------------------------------------------------


async def test_an_allowed_command_runs_and_its_output_reaches_the_model(
    tmp_path: Path, codex: CodexSession, api: FakeOpenAI
) -> None:
    events, end = await _turn(codex, "TOOL_BASH touch made.txt && echo made-$((6*7))")
    (use,) = [e for e in events if isinstance(e, ToolUse)]
    assert use == ToolUse("Bash", "touch made.txt && echo made-$((6*7))")
    (request,) = [e for e in events if isinstance(e, ToolRequest)]
    assert request.tool == "Bash"
    assert request.input["command"] == "touch made.txt && echo made-$((6*7))"
    assert request.input["cwd"] == str((tmp_path / "work").resolve())
    assert end.status is TurnStatus.SUCCESS
    assert (tmp_path / "work" / "made.txt").exists()
    assert "made-42" in api.turns[-1].tool_outputs[-1]
    assert end.result.startswith("TOOL RESULT: ")
    assert "made-42" in end.result


async def test_a_declined_command_does_not_run_and_the_model_is_told_why(
    tmp_path: Path, codex: CodexSession, api: FakeOpenAI
) -> None:
    events, end = await _turn(codex, "TOOL_BASH touch declined.txt", allow=False)
    assert [e.tool for e in events if isinstance(e, ToolRequest)] == ["Bash"]
    assert end.status is TurnStatus.SUCCESS
    assert not (tmp_path / "work" / "declined.txt").exists()
    assert "rejected by user" in api.turns[-1].tool_outputs[-1]
    assert "denied by alice" in api.user_texts()[-1]


async def test_questions_and_plans_are_refused_saying_why(codex: CodexSession) -> None:
    with pytest.raises(SessionError, match="not available on codex"):
        async for _ in codex.run("plan it", plan=True):
            pass
    request = QuestionRequest("r1", (), {})
    with pytest.raises(SessionError, match="not available on codex"):
        await codex.answer_questions(request, None, "nobody")
    _, end = await _turn(codex, "still fine")
    assert end.status is TurnStatus.SUCCESS


# -- interrupt, death, timeout ---------------------------------------------------------------


async def test_interrupt_ends_a_slow_turn_as_interrupted(
    codex: CodexSession, api: FakeOpenAI
) -> None:
    events: asyncio.Queue[object] = asyncio.Queue()
    turn = asyncio.create_task(_consume(codex, "SLOW please", events))
    await asyncio.wait_for(api.first_delta.wait(), WITHIN_S)
    assert await codex.interrupt()
    async with asyncio.timeout(SLOW_STEPS * SLOW_INTERVAL_S / 2):
        await turn
    *_, end = [events.get_nowait() for _ in range(events.qsize())]
    assert isinstance(end, TurnEnd)
    assert end.status is TurnStatus.INTERRUPTED
    assert not await codex.interrupt(), "no turn runs any more"
    _, after = await _turn(codex, "after the interrupt")
    assert after.result == "ECHO: after the interrupt"


async def test_an_interrupt_while_the_approvers_decide_ends_the_turn(
    tmp_path: Path, codex: CodexSession
) -> None:
    events: list[AgentEvent] = []
    async with asyncio.timeout(WITHIN_S):
        async for event in codex.run("TOOL_BASH touch never.txt"):
            events.append(event)
            if isinstance(event, ToolRequest):
                assert await codex.interrupt()
    end = events[-1]
    assert isinstance(end, TurnEnd)
    assert end.status is TurnStatus.INTERRUPTED
    (request,) = [e for e in events if isinstance(e, ToolRequest)]
    await codex.answer_tool(request, allow=True)  # too late: nothing waits for it
    assert not (tmp_path / "work" / "never.txt").exists()
    _, after = await _turn(codex, "next one")
    assert after.result == "ECHO: next one"


async def test_codex_killed_mid_turn_raises_and_is_restarted(
    codex: CodexSession, api: FakeOpenAI
) -> None:
    await _turn(codex, "before the crash")
    events: asyncio.Queue[object] = asyncio.Queue()
    turn = asyncio.create_task(_consume(codex, "SLOW crash", events))
    await asyncio.wait_for(api.first_delta.wait(), WITHIN_S)
    first_pid = codex.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    async with asyncio.timeout(WITHIN_S):
        await turn
    died = [
        e for e in (events.get_nowait() for _ in range(events.qsize())) if isinstance(e, Exception)
    ]
    assert len(died) == 1
    assert isinstance(died[0], SessionDied)
    await asyncio.wait_for(codex.ready.wait(), WITHIN_S)
    assert codex.restarts == 1
    assert codex.pid != first_pid
    _, end = await _turn(codex, "after the crash")
    assert end.result == "ECHO: after the crash"
    assert "ECHO: before the crash" in _history(api), "the restart resumed the thread"


async def test_a_turn_past_its_timeout_is_interrupted_and_fails(
    tmp_path: Path, api: FakeOpenAI
) -> None:
    async with _session(tmp_path, api, turn_timeout_s=3.0) as session:
        events, end = await _turn(session, "SLOW and long")
        assert end.status is TurnStatus.ERROR
        assert "claude.turn_timeout_s" in end.error
        assert _streamed(events).startswith("ECHO: SLOW and long")
        assert session.restarts == 0, "codex took the interrupt: it was not killed"


async def test_lines_that_are_not_the_protocol_are_skipped(
    codex: CodexSession, caplog: pytest.LogCaptureFixture
) -> None:
    codex._route("this is not JSON")
    codex._route('["a list"]')
    codex._route('{"neither": "method nor id"}')
    assert sum("codex wrote" in r.getMessage() for r in caplog.records) == 3
    _, end = await _turn(codex, "still working")
    assert end.result == "ECHO: still working"


# -- errors and outages ----------------------------------------------------------------------------


async def test_a_server_error_fails_the_turn_at_once(codex: CodexSession, api: FakeOpenAI) -> None:
    _, end = await _turn(codex, "FAIL now")
    assert end.status is TurnStatus.ERROR
    assert end.error
    assert end.outage is None
    assert api.user_texts() == ["FAIL now"], "codex retried the 500"


async def test_a_429_is_an_outage_and_the_rerun_succeeds(
    codex: CodexSession, api: FakeOpenAI
) -> None:
    _, end = await _turn(codex, "LIMIT_429 please")
    assert end.status is TurnStatus.ERROR
    assert end.outage is not None
    assert end.outage.kind is OutageKind.RATE_LIMITED
    assert "429" in end.error
    _, again = await _turn(codex, "LIMIT_429 please")
    assert again.status is TurnStatus.SUCCESS


async def test_a_usage_limit_is_an_outage(codex: CodexSession) -> None:
    _, end = await _turn(codex, "LIMIT_USAGE now")
    assert end.status is TurnStatus.ERROR
    assert end.outage is not None
    assert end.outage.kind is OutageKind.USAGE_LIMIT


# -- starting -------------------------------------------------------------------------------------


async def test_a_codex_that_cannot_start_says_why(tmp_path: Path, api: FakeOpenAI) -> None:
    # agent.command's extra arguments go after `app-server`: --strict-config is its option.
    settings = _settings(tmp_path, "--strict-config")
    env = _env(tmp_path, api)
    config = Path(env["CODEX_HOME"]) / "config.toml"
    config.write_text("no_such_setting = 1\n" + config.read_text())
    session = CodexSession(
        settings.agent, settings.claude, session_id=None, env=env, confinement=NO_CONFINEMENT
    )
    with pytest.raises(SessionError, match="no_such_setting"):
        await session.start()
    assert not session.ready.is_set()
    assert api.turns == []


async def test_serve_raises_once_codex_cannot_start_again(tmp_path: Path, api: FakeOpenAI) -> None:
    settings = _settings(tmp_path, "--strict-config")
    env = _env(tmp_path, api)
    async with CodexSession(
        settings.agent, settings.claude, session_id=None, env=env, confinement=NO_CONFINEMENT
    ) as session:
        serving = asyncio.create_task(session.serve())
        config = Path(env["CODEX_HOME"]) / "config.toml"
        config.write_text("no_such_setting = 1\n" + config.read_text())
        assert session.pid is not None
        os.kill(session.pid, signal.SIGKILL)
        with pytest.raises(SessionError, match="no_such_setting"):
            await asyncio.wait_for(serving, WITHIN_S)
        assert session.restarts == 1
        assert not session.ready.is_set()


async def test_a_missing_cli_names_make_codex(tmp_path: Path, api: FakeOpenAI) -> None:
    settings = make_settings(
        tmp_path, None, agent={"kind": "codex", "command": [str(tmp_path / "no-codex")]}
    )
    session = CodexSession(
        settings.agent, settings.claude, session_id=None, env={}, confinement=NO_CONFINEMENT
    )
    with pytest.raises(SessionError, match="make codex"):
        await session.start()


def test_without_agent_command_the_project_local_cli_then_path_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = make_settings(tmp_path, None, agent={"kind": "codex"}).agent
    local = Path(codex_command())  # tests/fakes' choice: the project-local install
    monkeypatch.chdir(local.parents[4])
    assert codex_argv(agent, ClaudeSettings()) == [str(local), "app-server"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(local.parent))
    assert codex_argv(agent, ClaudeSettings()) == [str(local), "app-server"]
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SessionError, match="make codex"):
        codex_argv(agent, ClaudeSettings())


# -- through the app ---------------------------------------------------------------------------


async def test_a_party_on_codex_asks_its_approvers_and_keeps_the_thread(
    tmp_path: Path, api: FakeOpenAI
) -> None:
    settings = _settings(tmp_path)
    env = _env(tmp_path, api)
    sessions: list[CodexSession] = []

    def codex_agent(party: str, session_id: str | None) -> CodexSession:
        sessions.append(
            CodexSession(
                settings.agent,
                settings.claude,
                session_id=session_id,
                env=env,
                confinement=NO_CONFINEMENT,
            )
        )
        return sessions[-1]

    app = App(settings, agent_env=env, confinement=NO_CONFINEMENT, agent_factory=codex_agent)
    async with app:
        party = app.parties[settings.party.name]
        events = Events()
        party.subscribe(events)
        chat = MemoryAdapter(party)
        app.add(chat)
        async with serving(app):
            assert await chat.join("alice", app.invites[party.name].prompter)
            assert await chat.join("host", app.invites[party.name].host)
            await chat.push_prompt("alice", "TOOL_BASH touch via-app.txt")
            approval = await events.approval()
            assert approval.tool == "Bash"
            assert approval.summary == "run `touch via-app.txt`"
            assert not (tmp_path / "work" / "via-app.txt").exists()
            allowed = await chat.command("host", "approve", f"{approval.approval_id} allow")
            assert allowed.ok, allowed.text
            done = await events.done(within_s=WITHIN_S)
            assert done.status is TurnStatus.SUCCESS
            assert (tmp_path / "work" / "via-app.txt").exists()
            streamed = "".join(e.text for e in events.seen if isinstance(e, OutputText))
            assert "TOOL RESULT: " in streamed
            status = await chat.command("alice", "status")
            assert "Codex" in status.text
        stored = await app.store.session_id(party.name)
    assert stored is not None
    assert stored == sessions[-1].session_id
    assert api.user_texts()[0].endswith("TOOL_BASH touch via-app.txt")


# -- what the CLI cannot be made to send here ---------------------------------------------------
# The fake's model gets no apply_patch tool, and nothing asks for more permissions: the
# answers to those approvals are checked on the shapes 0.171's schema gives them.


def test_a_file_change_is_asked_with_the_changes_of_its_item() -> None:
    change: dict[str, JsonValue] = {
        "path": "/w/a.py",
        "kind": {"type": "update", "move_path": None},
        "diff": "-a\n+b",
    }
    items = {"call_1": {"type": "fileChange", "id": "call_1", "changes": [change]}}
    params = {"threadId": "t", "turnId": "u", "itemId": "call_1", "reason": "edit a.py"}
    approval = Approval(7, "item/fileChange/requestApproval", params)
    request = tool_request(approval, items)
    assert request == ToolRequest(
        "7",
        "ApplyPatch",
        {"changes": [change], "path": "/w/a.py", "reason": "edit a.py"},
        "call_1",
    )
    assert answer(approval, True) == {"decision": "accept"}
    assert answer(approval, False) == {"decision": "decline"}


def test_permissions_are_granted_as_asked_for_the_turn_or_not_at_all() -> None:
    asked = {"network": {"enabled": True}, "fileSystem": None}
    params = {"itemId": "i", "cwd": "/w", "reason": None, "permissions": asked}
    approval = Approval("p1", "item/permissions/requestApproval", params)
    assert tool_request(approval, {}).input == {"permissions": asked, "cwd": "/w"}
    assert answer(approval, True) == {
        "permissions": {"network": {"enabled": True}},
        "scope": "turn",
    }
    assert answer(approval, False) == {"permissions": {}, "scope": "turn"}


def test_outages_are_read_from_codex_error_info() -> None:
    def kind(info: object) -> OutageKind | None:
        outage = _outage({"message": "m", "codexErrorInfo": info})
        return outage.kind if outage is not None else None

    assert kind("serverOverloaded") is OutageKind.OVERLOADED
    assert (
        kind({"responseStreamConnectionFailed": {"httpStatusCode": 529}}) is OutageKind.OVERLOADED
    )
    assert kind({"httpConnectionFailed": {"httpStatusCode": 500}}) is None
    assert kind("internalServerError") is None
