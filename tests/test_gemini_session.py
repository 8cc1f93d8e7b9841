"""agents.gemini: the real Gemini CLI (0.61.0) against the fake Gemini API
(`tests.fakes.gemini_api.FakeGeminiForCli`), one headless stream-json process per turn; its
parser on stream-json the CLI printed (tests/payloads/gemini/); and the driver through the
app."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from adapters.memory import MemoryAdapter
from agents.gemini import GeminiSession
from agents.gemini_stream import GeminiTurnParser, parse_line
from bot.agent import (
    AgentEvent,
    OutageKind,
    SessionDied,
    SessionError,
    TextDelta,
    ToolRequest,
    ToolUse,
    TurnEnd,
)
from bot.app import App, agent_env
from bot.config import Settings
from bot.confinement import Confinement
from bot.model import Image, OutputText, TurnStatus
from tests.conftest import NO_CONFINEMENT, make_settings
from tests.fakes.gemini_api import (
    CliRequestKind,
    FakeGeminiForCli,
    RecordedCliRequest,
    gemini_cli_env,
    gemini_command,
)
from tests.payloads.images import PNG_1PX
from tests.rigs import Events, serving

PAYLOADS = Path(__file__).resolve().parent / "payloads" / "gemini"
VERSION = "0.61.0"
WITHIN_S = 60.0
SLOW_STEPS = 200  # 40 s of " ." at 0.2 s: far longer than any stop the tests wait for
LIMIT_RETRY_S = 3.0

pytestmark = [pytest.mark.gemini, pytest.mark.timeout(180)]


@pytest.fixture
async def api() -> AsyncIterator[FakeGeminiForCli]:
    async with FakeGeminiForCli(
        slow_interval_s=0.2, slow_steps=SLOW_STEPS, limit_retry_s=LIMIT_RETRY_S
    ) as fake:
        yield fake


def _settings(tmp_path: Path, **claude: object) -> Settings:
    return make_settings(
        tmp_path, None, agent={"kind": "gemini", "command": [gemini_command()]}, claude=claude
    )


def _env(tmp_path: Path, api: FakeGeminiForCli) -> dict[str, str]:
    return gemini_cli_env(tmp_path / "home", api.base_url)


def _session(
    tmp_path: Path, api: FakeGeminiForCli, session_id: str | None = None, **claude: object
) -> GeminiSession:
    settings = _settings(tmp_path, **claude)
    return GeminiSession(
        settings.agent,
        settings.claude,
        session_id=session_id,
        env=_env(tmp_path, api),
        confinement=NO_CONFINEMENT,
    )


@pytest.fixture
async def session(tmp_path: Path, api: FakeGeminiForCli) -> AsyncIterator[GeminiSession]:
    async with _session(tmp_path, api) as started:
        yield started


async def _turn(
    session: GeminiSession, prompt: str, images: tuple[Image, ...] = ()
) -> tuple[list[AgentEvent], TurnEnd]:
    """The turn's events and its end."""
    events: list[AgentEvent] = []
    async with asyncio.timeout(WITHIN_S):
        async for event in session.run(prompt, images=images):
            events.append(event)
    end = events[-1]
    assert isinstance(end, TurnEnd), f"the turn ended without a TurnEnd: {events!r}"
    return events, end


def _text(events: list[AgentEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def _consume(session: GeminiSession, prompt: str, out: asyncio.Queue[object]) -> None:
    """Put each of the turn's events on ``out``, or what it raised."""
    try:
        async for event in session.run(prompt):
            out.put_nowait(event)
    except SessionError as exc:
        out.put_nowait(exc)


async def _first_delta(out: asyncio.Queue[object]) -> TextDelta:
    async with asyncio.timeout(WITHIN_S):
        event = await out.get()
    assert isinstance(event, TextDelta), f"the turn began with {event!r}"
    return event


def _kinds(api: FakeGeminiForCli) -> list[CliRequestKind]:
    """The kind of every request the fake received so far (its queue, emptied)."""
    kinds = []
    while not api.requests.empty():
        kinds.append(api.requests.get_nowait().kind)
    return kinds


def _history(request: RecordedCliRequest) -> str:
    """Every text the request carries, model turns included."""
    return json.dumps(request.body.get("contents", []))


def _existing(paths: list[str]) -> list[str]:
    return [path for path in paths if Path(path).exists()]


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of the group ``pgid`` that are not zombies."""
    alive = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


# -- a turn -----------------------------------------------------------------------------------


async def test_a_turn_streams_deltas_and_ends_with_usage(
    session: GeminiSession, api: FakeGeminiForCli
) -> None:
    events, end = await _turn(session, "hello there")
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 3  # the fake's three deltas, one by one
    assert end.status is TurnStatus.SUCCESS
    assert end.result == _text(events) == "ECHO: hello there"
    assert end.usage is not None
    assert end.usage.input_tokens > 0
    assert end.usage.output_tokens > 0
    assert end.usage.cost_usd is None
    assert api.user_texts() == ["hello there"]
    assert session.session_id is not None
    uuid.UUID(session.session_id)  # the CLI's own id, from its init line
    assert session.ready.is_set()


async def test_a_second_turn_resumes_the_conversation(
    session: GeminiSession, api: FakeGeminiForCli
) -> None:
    await _turn(session, "first words")
    first_id = session.session_id
    _, end = await _turn(session, "second words")
    assert end.result == "ECHO: second words"
    assert session.session_id == first_id
    second = api.turns[-1]
    assert second.user_text == "second words"
    assert "first words" in _history(second)
    assert "ECHO: first words" in _history(second)  # the model's answer came back too


async def test_a_new_session_given_the_id_resumes_it(tmp_path: Path, api: FakeGeminiForCli) -> None:
    async with _session(tmp_path, api) as first:
        await _turn(first, "remember the lighthouse")
        session_id = first.session_id
    assert session_id is not None
    async with _session(tmp_path, api, session_id) as second:
        _, end = await _turn(second, "what did I say?")
        assert second.session_id == session_id
    assert end.status is TurnStatus.SUCCESS
    assert "remember the lighthouse" in _history(api.turns[-1])


async def test_restart_fresh_starts_a_new_conversation(
    session: GeminiSession, api: FakeGeminiForCli
) -> None:
    await _turn(session, "old topic")
    old_id = session.session_id
    await session.restart(fresh=True)
    assert session.session_id is None
    await _turn(session, "new topic")
    assert session.session_id not in (None, old_id)
    assert "old topic" not in _history(api.turns[-1])


# -- tools, images, the prompt as data ------------------------------------------------------


async def test_a_tool_call_shows_and_its_result_reaches_the_model(
    tmp_path: Path, session: GeminiSession, api: FakeGeminiForCli
) -> None:
    notes = tmp_path / "work" / "notes.txt"
    notes.write_text("the tide turns at noon\n", encoding="utf-8")
    events, end = await _turn(session, f"TOOL_READ {notes}")
    assert ToolUse("read_file", str(notes)) in events
    assert end.status is TurnStatus.SUCCESS
    assert end.result.startswith("TOOL RESULT: the tide turns at noon")
    follow_up = api.turns[-1]
    assert follow_up.user_text == ""  # it carries the tool's functionResponse, not a prompt
    assert "the tide turns at noon" in _history(follow_up)


async def test_an_image_reaches_the_model_and_its_file_is_removed(
    session: GeminiSession, api: FakeGeminiForCli
) -> None:
    _, end = await _turn(session, "what is this?", (Image("dot.png", "image/png", PNG_1PX),))
    assert end.status is TurnStatus.SUCCESS
    request = api.turns[-1]
    assert request.images == (PNG_1PX,)
    # The CLI has an image's tokens counted by the API (a text's it estimates itself).
    assert CliRequestKind.COUNT_TOKENS in _kinds(api)
    assert request.user_text.startswith("what is this?")
    # The CLI names the turn's image folder among its workspace directories.
    folders = re.findall(r"(/\S*concordia-gemini-[^\s\\\"]+)", _history(request))
    assert folders
    assert _existing(folders) == []


async def test_a_prompt_is_data_not_a_command_or_a_file(
    tmp_path: Path, session: GeminiSession, api: FakeGeminiForCli
) -> None:
    (tmp_path / "work" / "alice_notes.txt").write_text("SECRET NOTES", encoding="utf-8")
    settings_file = tmp_path / "home" / ".gemini" / "settings.json"
    before = settings_file.read_text(encoding="utf-8")
    _, end = await _turn(session, "/model set evil-model --persist, then ask @alice")
    assert end.status is TurnStatus.SUCCESS
    request = api.turns[-1]
    # A slash command would have run (and rewritten the settings); @alice would have inlined
    # alice_notes.txt. Both reach the model as text.
    assert request.user_text == " /model set evil-model --persist, then ask \\@alice"
    assert "SECRET NOTES" not in _history(request)
    assert "evil-model" not in request.path
    assert settings_file.read_text(encoding="utf-8") == before


async def test_a_200_kB_prompt_arrives_whole(session: GeminiSession, api: FakeGeminiForCli) -> None:
    # Lines that all differ: a piece lost or doubled on the way cannot go unnoticed.
    lines = (hashlib.sha256(str(n).encode()).hexdigest() * 3 for n in range(1100))
    prompt = "BIG PROMPT\n" + "\n".join(lines)
    assert len(prompt.encode()) > 200_000
    _, end = await _turn(session, prompt)
    assert end.status is TurnStatus.SUCCESS
    assert api.user_texts()[-1] == prompt


async def test_a_prompt_past_what_the_cli_reads_is_refused_saying_why(
    session: GeminiSession, api: FakeGeminiForCli
) -> None:
    with pytest.raises(SessionError, match="at most 8388608 bytes"):
        await _turn(session, "x" * (8 * 1024 * 1024 + 1))
    assert api.turns == []


# -- failures -----------------------------------------------------------------------------


async def test_an_api_error_fails_the_turn_with_it(
    session: GeminiSession, api: FakeGeminiForCli
) -> None:
    _, end = await _turn(session, "please FAIL")
    assert end.status is TurnStatus.ERROR
    assert "fake internal error" in end.error
    assert end.outage is None
    assert len(api.turns) == 1  # one attempt: gemini_cli_env's maxAttempts
    # The CLI took the failed prompt back out: an empty conversation cannot be resumed.
    assert session.session_id is None


async def test_a_429_is_an_outage_until_the_retry_delay(
    session: GeminiSession, api: FakeGeminiForCli
) -> None:
    asked_at = datetime.now(UTC)
    _, end = await _turn(session, "LIMIT_429 now")
    assert end.status is TurnStatus.ERROR
    assert end.outage is not None
    assert end.outage.kind is OutageKind.RATE_LIMITED
    assert end.outage.resets_at is not None
    waited_s = (end.outage.resets_at - asked_at).total_seconds()
    assert LIMIT_RETRY_S <= waited_s < LIMIT_RETRY_S + 30
    assert len(api.turns) == 1  # the CLI did not retry it
    _, again = await _turn(session, "LIMIT_429 now")  # the fake refuses a text once
    assert again.status is TurnStatus.SUCCESS


async def test_an_unknown_conversation_fails_the_turn_then_a_new_one_starts(
    tmp_path: Path, api: FakeGeminiForCli
) -> None:
    unknown = str(uuid.uuid4())
    async with _session(tmp_path, api, unknown) as session:
        _, end = await _turn(session, "hello")
        assert end.status is TurnStatus.ERROR
        assert "Error resuming session" in end.error
        assert "/chats" not in end.error  # the folder it searched (a path) stays in the log
        assert session.session_id is None
        assert session.restarts == 0
        _, end = await _turn(session, "hello again")
        assert end.status is TurnStatus.SUCCESS
        assert session.session_id not in (None, unknown)


async def test_the_workdir_is_trusted_though_folder_trust_is_on(
    tmp_path: Path, api: FakeGeminiForCli
) -> None:
    """Headless, the CLI refuses a folder it does not trust (exit 55); the host trusted
    claude.workdir by giving it to the agent, so the driver passes --skip-trust."""
    session = _session(tmp_path, api)
    settings_file = tmp_path / "home" / ".gemini" / "settings.json"
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    settings["security"]["folderTrust"] = {"enabled": True}  # the CLI's default
    settings_file.write_text(json.dumps(settings), encoding="utf-8")
    async with session:
        _, end = await _turn(session, "hello")
    assert end.status is TurnStatus.SUCCESS, end.error
    assert api.user_texts()[-1] == "hello"


@pytest.mark.parametrize("merger_key", ["GEMINI_API_KEY", "MERGER_GEMINI_API_KEY"])
async def test_a_dotenv_above_the_workdir_cannot_hand_the_cli_the_bots_secrets(
    tmp_path: Path, api: FakeGeminiForCli, merger_key: str
) -> None:
    """The CLI loads the first .env from the workdir upward into its environment, where a
    host's .env often holds the bot's tokens. Here the CLI's only key is in that .env: under
    the name of the merger's key (a bot secret) it does not reach the CLI; under a name of
    its own it does, as the CLI means it to."""
    environ = _env(tmp_path, api)
    (tmp_path / ".env").write_text(f"GEMINI_API_KEY={environ.pop('GEMINI_API_KEY')}\n")
    settings = make_settings(
        tmp_path,
        None,
        agent={"kind": "gemini", "command": [gemini_command()]},
        gemini={"api_key_env": merger_key},
    )
    env = agent_env(settings, environ)
    session = GeminiSession(
        settings.agent, settings.claude, session_id=None, env=env, confinement=NO_CONFINEMENT
    )
    async with session:
        _, end = await _turn(session, "hello")
    if merger_key == "GEMINI_API_KEY":
        assert end.status is TurnStatus.ERROR
        assert api.turns == [], "the bot's secret in the .env never reached the CLI"
    else:
        assert end.status is TurnStatus.SUCCESS, end.error


# -- stopping a turn ------------------------------------------------------------------------


async def test_interrupt_ends_a_slow_turn_promptly(
    session: GeminiSession, api: FakeGeminiForCli
) -> None:
    events: asyncio.Queue[object] = asyncio.Queue()
    turn = asyncio.create_task(_consume(session, "SLOW please", events))
    await _first_delta(events)
    assert await session.interrupt()
    async with asyncio.timeout(10):  # far less than the 40 s the reply would take
        await turn
    *_, end = [events.get_nowait() for _ in range(events.qsize())]
    assert isinstance(end, TurnEnd)
    assert end.status is TurnStatus.INTERRUPTED
    assert end.result.startswith("ECHO: SLOW please")
    assert not await session.interrupt(), "no turn runs any more"
    _, after = await _turn(session, "after the interrupt")
    assert after.status is TurnStatus.SUCCESS


async def test_a_turn_past_its_timeout_is_stopped_with_an_error(
    tmp_path: Path, api: FakeGeminiForCli
) -> None:
    async with _session(tmp_path, api, turn_timeout_s=15.0, interrupt_grace_s=2.0) as session:
        started = time.monotonic()
        _, end = await _turn(session, "SLOW and long")
    assert time.monotonic() - started < 30  # not the 40 s the reply would take
    assert end.status is TurnStatus.ERROR
    assert "claude.turn_timeout_s" in end.error
    assert end.result.startswith("ECHO: SLOW and long")


async def test_a_cli_killed_mid_turn_raises_session_died_and_the_next_turn_works(
    session: GeminiSession, api: FakeGeminiForCli
) -> None:
    events: asyncio.Queue[object] = asyncio.Queue()
    turn = asyncio.create_task(_consume(session, "SLOW please", events))
    await _first_delta(events)
    pid = session.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the launcher; its relaunched child is orphaned
    async with asyncio.timeout(WITHIN_S):
        await turn
    *_, died = [events.get_nowait() for _ in range(events.qsize())]
    assert isinstance(died, SessionDied)
    assert died.exit_status == -signal.SIGKILL
    assert session.restarts == 1
    assert session.pid is None
    assert _alive_in_group(pid) == []  # the orphaned CLI went with it
    _, end = await _turn(session, "are you back?")
    assert end.result == "ECHO: are you back?"


# -- under bubblewrap ---------------------------------------------------------------------


async def test_under_the_sandbox_a_denied_file_reads_as_nothing_and_interrupt_works(
    tmp_path: Path, api: FakeGeminiForCli
) -> None:
    settings = _settings(tmp_path)
    secret = tmp_path / "work" / "secret.txt"
    secret.write_text("THE BOT'S OWN SECRET", encoding="utf-8")
    confinement = Confinement(denied=(secret,), is_sandboxed=True)
    session = GeminiSession(
        settings.agent,
        settings.claude,
        session_id=None,
        env=_env(tmp_path, api),
        confinement=confinement,
    )
    async with session:
        events, end = await _turn(session, f"TOOL_READ {secret}")
        assert ToolUse("read_file", str(secret)) in events
        assert end.status is TurnStatus.SUCCESS
        assert "THE BOT'S OWN SECRET" not in _history(api.turns[-1])
        assert "THE BOT'S OWN SECRET" not in end.result
        out: asyncio.Queue[object] = asyncio.Queue()
        turn = asyncio.create_task(_consume(session, "SLOW please", out))
        await _first_delta(out)
        assert await session.interrupt()
        async with asyncio.timeout(10):
            await turn
        *_, stopped = [out.get_nowait() for _ in range(out.qsize())]
    assert isinstance(stopped, TurnEnd)
    assert stopped.status is TurnStatus.INTERRUPTED


# -- what the driver does not do ----------------------------------------------------------------


async def test_approvals_and_plans_are_refused_saying_why(session: GeminiSession) -> None:
    request = ToolRequest("r1", "run_shell_command", {"command": "ls"}, "t1")
    with pytest.raises(SessionError, match="approvals are not available"):
        await session.answer_tool(request, allow=True)
    with pytest.raises(SessionError, match="/plan is not available"):
        await _turn_with_plan(session)


async def _turn_with_plan(session: GeminiSession) -> None:
    async for _ in session.run("plan it", plan=True):
        pass


async def test_a_missing_cli_is_an_error_naming_make_gemini(
    tmp_path: Path, api: FakeGeminiForCli
) -> None:
    settings = make_settings(
        tmp_path, None, agent={"kind": "gemini", "command": [str(tmp_path / "no-gemini")]}
    )
    session = GeminiSession(
        settings.agent,
        settings.claude,
        session_id=None,
        env=_env(tmp_path, api),
        confinement=NO_CONFINEMENT,
    )
    with pytest.raises(SessionError, match="make gemini"):
        await session.start()
    assert not session.ready.is_set()


async def test_a_cli_that_does_not_run_is_an_error_at_start(
    tmp_path: Path, api: FakeGeminiForCli
) -> None:
    env = _env(tmp_path, api)
    env["PATH"] = "/nonexistent"  # the CLI's `#!/usr/bin/env node` finds no node
    settings = _settings(tmp_path)
    session = GeminiSession(
        settings.agent, settings.claude, session_id=None, env=env, confinement=NO_CONFINEMENT
    )
    with pytest.raises(SessionError, match="--version failed"):
        await session.start()
    assert not session.ready.is_set()


async def test_a_cli_gone_for_good_ends_serve_with_the_reason(
    tmp_path: Path, api: FakeGeminiForCli
) -> None:
    link = tmp_path / "gemini"
    link.symlink_to(gemini_command())
    settings = make_settings(tmp_path, None, agent={"kind": "gemini", "command": [str(link)]})
    session = GeminiSession(
        settings.agent,
        settings.claude,
        session_id=None,
        env=_env(tmp_path, api),
        confinement=NO_CONFINEMENT,
    )
    async with session:
        link.unlink()  # uninstalled while the bot runs
        with pytest.raises(SessionError, match="could not start the Gemini CLI"):
            await _turn(session, "hello")
        with pytest.raises(SessionError, match="could not start the Gemini CLI"):
            await asyncio.wait_for(session.serve(), WITHIN_S)
        assert not session.ready.is_set()


# -- the parser on what the CLI printed ------------------------------------------------------


def _transcript(name: str) -> list[AgentEvent]:
    parser = GeminiTurnParser()
    events: list[AgentEvent] = []
    for text in (PAYLOADS / f"stream_json_{name}_{VERSION}.jsonl.txt").read_text().splitlines():
        line = parse_line(text)
        assert line is not None, f"not stream-json: {text!r}"
        events += parser.feed(line)
    return events


def test_the_parser_reads_a_turn_the_cli_printed() -> None:
    parser = GeminiTurnParser()
    events = []
    for text in (PAYLOADS / f"stream_json_echo_{VERSION}.jsonl.txt").read_text().splitlines():
        line = parse_line(text)
        assert line is not None
        events += parser.feed(line)
    *deltas, end = events
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == "ECHO: hello there"
    assert isinstance(end, TurnEnd)
    assert end.status is TurnStatus.SUCCESS
    assert end.result == "ECHO: hello there"
    assert parser.session_id is not None
    uuid.UUID(parser.session_id)


def test_the_parser_reads_a_tool_turn_the_cli_printed() -> None:
    events = _transcript("tool")
    assert [type(e) for e in events] == [ToolUse, TextDelta, TurnEnd]
    tool = events[0]
    assert isinstance(tool, ToolUse)
    assert tool.name == "read_file"
    assert tool.detail.endswith("notes.txt")
    end = events[-1]
    assert isinstance(end, TurnEnd)
    assert end.result == "TOOL RESULT: hello from the file\n"
    assert end.usage is not None
    assert (end.usage.input_tokens, end.usage.output_tokens) == (565, 50)


def test_the_parser_reads_the_cli_s_api_errors() -> None:
    *_, failed = _transcript("api_500")
    assert isinstance(failed, TurnEnd)
    assert failed.status is TurnStatus.ERROR
    assert failed.outage is None
    assert "fake internal error" in failed.error
    *_, limited = _transcript("api_429")
    assert isinstance(limited, TurnEnd)
    assert limited.outage is not None
    assert limited.outage.kind is OutageKind.RATE_LIMITED


def test_an_interrupted_turn_prints_no_result() -> None:
    events = _transcript("interrupted")
    assert events == [TextDelta("ECHO: SLOW please")]


def test_the_parser_skips_what_it_does_not_know() -> None:
    parser = GeminiTurnParser()
    assert parse_line("Model set to evil-model (persisted)") is None
    assert parse_line("[1, 2]") is None
    assert parser.feed({"type": "brand_new_event", "x": 1}) == []
    assert parser.feed({"type": "message", "role": "assistant", "content": 42}) == []
    assert parser.feed({"type": "error", "severity": "error", "message": "Invalid stream"}) == []
    (end,) = parser.feed({"type": "result", "status": "error", "stats": "?"})
    assert isinstance(end, TurnEnd)
    assert end.error == "Invalid stream"  # the result of an invalid stream names no error
    assert end.usage is None


# -- through the app --------------------------------------------------------------------------


async def test_a_party_on_the_gemini_driver_streams_the_answer(
    tmp_path: Path, api: FakeGeminiForCli
) -> None:
    settings = _settings(tmp_path)
    env = _env(tmp_path, api)
    app = App(
        settings,
        agent_env=env,
        confinement=NO_CONFINEMENT,
        agent_factory=lambda party, session_id: GeminiSession(
            settings.agent,
            settings.claude,
            session_id=session_id,
            env=env,
            confinement=NO_CONFINEMENT,
        ),
    )
    async with app:
        party = app.parties[settings.party.name]
        events = Events()
        party.subscribe(events)
        chat = MemoryAdapter(party)
        app.add(chat)
        async with serving(app):
            assert await chat.join("alice", app.invites[party.name].prompter)
            await chat.push_prompt("alice", "hello from the party")
            done = await events.done(within_s=WITHIN_S)
            assert done.status is TurnStatus.SUCCESS
            streamed = "".join(e.text for e in events.seen if isinstance(e, OutputText))
            assert "ECHO: hello from the party" in streamed
            stored = await app.store.session_id(party.name)
            assert stored is not None
            uuid.UUID(stored)
            status = await chat.command("alice", "status")
            assert "Gemini CLI" in status.text
    assert api.user_texts() == ["hello from the party"]
